"""Start the real processes (gunicorn, qcluster) against the test database, as the containers do.

The one home of the tests' process handling: `free_port`, `wait_for` (poll until true), `wait_http` (poll a
URL), `start` / `start_web` / `start_worker` (a process group of its own, output to a log), `stop` (the group,
politely then firmly), `stop_worker` (as Kubernetes stops qcluster), `running_stack` (gunicorn + qcluster).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

from django.conf import settings
from django.db import connection

BASE_DIR = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def free_port() -> int:
    """Return a free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(
    predicate: Callable[[], T],
    *,
    timeout: float = 60.0,
    what: str = "the condition",
    interval: float = 0.25,
    details: Callable[[], str] | None = None,
) -> T:
    """Return predicate()'s first truthy value, polling until timeout; fail naming what was awaited (+ details())."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{details()}" if details else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")
        time.sleep(interval)


def log_tail(log: Path, lines: int = 40) -> str:
    """Return the last lines of a process log (for failure messages)."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({log} is missing)"


def wait_http(
    url: str, *, proc: subprocess.Popen[bytes], timeout: float = 30.0, ok_only: bool = False, log: Path | None = None
) -> None:
    """Wait until url answers (with 200 when ok_only); fail at once if proc exits, with the log's tail."""

    def answered() -> bool:
        if proc.poll() is not None:
            tail = f":\n{log_tail(log)}" if log else ""
            raise AssertionError(f"{proc.args} exited with {proc.returncode}{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return not ok_only or response.status == 200
        except urllib.error.HTTPError:
            return not ok_only
        except OSError:
            return False

    wait_for(
        answered, timeout=timeout, what=f"{url} to answer", interval=0.2, details=lambda: log_tail(log) if log else ""
    )


def test_database_url() -> str:
    """Return a DATABASE_URL for the database the test session is using."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    return f"postgres://{user}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


def process_env(**overrides: str) -> dict[str, str]:
    """Return the environment of a child process pointed at the test database and broker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "DATABASE_URL": test_database_url(),
            "REDIS_URL": settings.REDIS_URL or "",
            "SDP_ALLOW_INSECURE_URLS": "1",
            "LLM_PROVIDER": "offline",
            "Q_WORKERS": "2",
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(overrides)
    return env


class Stack:
    """Handles on the running web server and worker."""

    def __init__(self, base_url: str, web: subprocess.Popen[bytes], worker: subprocess.Popen[bytes] | None) -> None:
        self.base_url = base_url
        self.web = web
        self.worker = worker

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None):
        """Return (status, headers, parsed JSON or text) of one HTTP call to the web server."""
        req = urllib.request.Request(self.base_url + path, data=body, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                status, head, raw = response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            status, head, raw = exc.code, dict(exc.headers), exc.read()
        try:
            return status, head, json.loads(raw)
        except ValueError:
            return status, head, raw.decode("utf-8", "replace")


def stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    """Stop a process group politely, then firmly."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=timeout)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def start(command: list[str], *, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start command in the repository, in its own process group, its output appended to log."""
    return subprocess.Popen(
        command, cwd=BASE_DIR, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True
    )


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start `python manage.py qcluster` in its own process group."""
    return start([sys.executable, "manage.py", "qcluster"], env=env, log=log)


def start_web(env: dict[str, str], log: Path, *, port: int | None = None) -> subprocess.Popen[bytes]:
    """Start gunicorn: with a port, on 127.0.0.1:port with 2 workers x 2 threads; without, as the image does.

    Without a port it runs `-c deploy/gunicorn.conf.py`, so env's GUNICORN_BIND, WEB_CONCURRENCY, ... apply.
    """
    command = [sys.executable, "-m", "gunicorn", "project.wsgi:application"]
    if port is None:
        command += ["-c", "deploy/gunicorn.conf.py"]
    else:
        command += ["--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "2", "--graceful-timeout", "5"]
    return start(command, env=env, log=log)


@contextmanager
def running_stack(tmp_path: Path, *, worker: bool = True, **env_overrides: Any) -> Iterator[Stack]:
    """Run gunicorn (the production web command) and qcluster until the block ends."""
    port = free_port()
    env = process_env(**{k: str(v) for k, v in env_overrides.items()})
    web = start_web(env, tmp_path / "web.log", port=port)
    q = start_worker(env, tmp_path / "worker.log") if worker else None
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc=web, timeout=30, log=tmp_path / "web.log")
        yield Stack(f"http://127.0.0.1:{port}", web, q)
    finally:
        stop_worker(q)
        stop(web)


def stop_worker(proc: subprocess.Popen[bytes] | None, timeout: float = 30) -> None:
    """Stop qcluster as Kubernetes does (SIGTERM to the main process only), then SIGKILL the group."""
    # SIGTERM to the whole group reaches django-q's workers before the sentinel sends them STOP,
    # and the cluster then hangs until SIGKILL: `stop()` costs every worker teardown its full timeout.
    if proc is None or proc.poll() is not None:
        return
    # A test may have SIGSTOPped the cluster (a hung worker): resume it, or it cannot stop in order.
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGCONT)
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
