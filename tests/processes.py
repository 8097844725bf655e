"""Start the real processes (gunicorn, qcluster) against the test database, as the containers do."""

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
from typing import Any

from django.conf import settings
from django.db import connection

BASE_DIR = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """Return a free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(
    predicate: Callable[[], Any], *, timeout: float = 60.0, what: str = "the condition", interval: float = 0.25
) -> Any:
    """Return predicate()'s first truthy value, polling until timeout; fail the test naming what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


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


def _wait_http(url: str, deadline: float, proc: subprocess.Popen[bytes]) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in time")


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


@contextmanager
def running_stack(tmp_path: Path, *, worker: bool = True, **env_overrides: Any) -> Iterator[Stack]:
    """Run gunicorn (the production web command) and qcluster until the block ends."""
    port = free_port()
    env = process_env(**{k: str(v) for k, v in env_overrides.items()})
    web = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "project.wsgi:application",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--threads",
            "2",
            "--graceful-timeout",
            "5",
        ],  # fmt: skip
        cwd=BASE_DIR,
        env=env,
        stdout=(tmp_path / "web.log").open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    q = start_worker(env, tmp_path / "worker.log") if worker else None
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", time.monotonic() + 30, web)
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
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
