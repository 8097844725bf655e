"""Operational scenarios against the running compose stack (deploy/ci/compose.sh brought it up).

    python deploy/ci/scenarios.py --image ticket-enhancer:ci [--figures FILE]

1. Concurrent migrate: two containers running compose.yaml's migrate command start at the same moment on a
   fresh PostgreSQL: both exit 0, each migration is recorded once, one of them waited for the lock.
2. Rolling upgrade: while the running web (this release) answers a steady stream of signed webhooks, the
   next release's migrate (this image + an expand-only migration: a nullable column on the enhancements
   table and a new table) runs against the live database; no webhook fails; the new release's web then
   serves on the expanded schema and the old one keeps serving.
3. Graceful shutdown: SIGTERM to web and then to worker under bounded load (loopback, a few threads, a few
   seconds), while tasks are in flight (the SDP fake answers slowly). Every webhook answered 202 ends as
   exactly one posted note; no task is lost; the time from SIGTERM to exit is measured. The worker's grace
   period in the manifests must exceed the task timeout.
Exit status 0 when every scenario held, 1 otherwise. Load goes only to 127.0.0.1 and the stack's containers.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
# Requests the slow SDP fake holds (SDP accepts notes only on existing requests); bounds the load too.
REQUEST_IDS = {tenant: [f"{tenant}-{n:04d}" for n in range(1, 801)] for tenant in ("upgrade", "slow")}
NETWORK = "ticket-enhancer_default"
COMPOSE = ["docker", "compose", "-f", "compose.yaml", "-f", "deploy/ci/compose.ci.yaml"]


class ScenarioFailed(Exception):
    """A scenario's expectation did not hold."""


def sh(*args: str, timeout: float = 120, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a command in the repository root and return it; raise ScenarioFailed when check fails."""
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, cwd=REPO, **kw)
    if check and result.returncode != 0:
        raise ScenarioFailed(f"{' '.join(args[:4])}...: {(result.stderr or result.stdout).strip()[-800:]}")
    return result


def compose(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    env_file = os.path.join(os.environ["CI_RUN"], "compose.env")
    return sh(*COMPOSE, "--env-file", env_file, *args, timeout=timeout, check=check)


def log(message: str) -> None:
    print(f"     scen {message}", flush=True)


def load_smoke() -> Any:
    spec = importlib.util.spec_from_file_location("smoke_test", REPO / "runbook" / "smoke_test.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["smoke_test"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


SIGN = load_smoke().sign


class Stack:
    def __init__(self, image: str) -> None:
        self.image = image
        self.env = dict(
            line.split("=", 1)
            for line in Path(os.environ["CI_RUN"], "compose.env").read_text().splitlines()
            if "=" in line
        )
        self.base = f"http://127.0.0.1:{os.environ['WEB_PORT']}"
        self.compose_file = yaml.safe_load((REPO / "compose.yaml").read_text())

    def database_url(self, host: str = "postgres", db: str = "ticket_enhancer") -> str:
        return f"postgres://ticket_enhancer:{self.env['POSTGRES_PASSWORD']}@{host}:5432/{db}"

    def app_env(self, **overrides: str) -> list[str]:
        """Return `-e` arguments with the app environment compose gives migrate/web/worker."""
        config = json.loads(compose("config", "--format", "json").stdout)
        env = {**config["services"]["web"]["environment"], **overrides}
        return [item for key, value in env.items() for item in ("-e", f"{key}={value}")]

    def migrate_command(self) -> list[str]:
        return [str(part) for part in self.compose_file["services"]["migrate"]["command"]]

    def psql(self, container: str, sql: str, db: str = "ticket_enhancer") -> str:
        return sh("docker", "exec", container, "psql", "-U", "ticket_enhancer", "-d", db, "-tAc", sql).stdout.strip()

    def container(self, service: str) -> str:
        return compose("ps", "-q", service).stdout.strip()

    def manage(self, *args: str) -> str:
        return compose("exec", "-T", "web", "python", "manage.py", *args).stdout


class Load:
    """Signed webhooks from a few threads to web's loopback port; every answer is recorded."""

    def __init__(
        self, base: str, tenant: tuple[str, str], ids: list[str], *, threads: int = 2, pause: float = 0.5
    ) -> None:
        tenant, secret = tenant
        self.ids = iter(ids)
        self.url = f"{base}/webhook/servicedesk/{tenant}/"
        self.secret = secret
        self.threads = threads
        self.pause = pause
        self.stop = threading.Event()
        self.accepted: dict[str, str] = {}  # request id -> enhancement id (202)
        self.refused: list[str] = []  # connection refused/reset: SDP retries these, nothing was acknowledged
        self.errors: list[str] = []  # any other answer: a failure
        self._lock = threading.Lock()
        self._workers = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for worker in self._workers:
            worker.join(timeout=30)

    def _run(self) -> None:
        while not self.stop.is_set():
            with self._lock:
                request_id = next(self.ids, None)
            if request_id is None:  # bounded: never more webhooks than the SDP fake has requests
                return
            body = json.dumps(
                {"event": "request_created", "request": {"id": request_id, "subject": "VPN drops"}}
            ).encode()
            msg_id, stamp = f"msg_{uuid.uuid4().hex}", int(time.time())
            request = urllib.request.Request(self.url, data=body, method="POST")
            request.add_header("Content-Type", "application/json")
            request.add_header("webhook-id", msg_id)
            request.add_header("webhook-timestamp", str(stamp))
            request.add_header("webhook-signature", SIGN(self.secret, msg_id, stamp, body))
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    data = json.loads(answer.read())
                    outcome = ("accepted", data["enhancement_id"]) if answer.status == 202 else ("error", answer.status)
            except urllib.error.HTTPError as error:
                outcome = ("error", f"{error.code} {error.read()[:100]!r}")
            except OSError as error:  # refused / reset / timeout: nothing was acknowledged
                outcome = ("refused", type(error).__name__)
            with self._lock:
                if outcome[0] == "accepted":
                    self.accepted[request_id] = str(outcome[1])
                elif outcome[0] == "refused":
                    self.refused.append(str(outcome[1]))
                else:
                    self.errors.append(str(outcome[1]))
            time.sleep(self.pause)


def concurrent_migrate(stack: Stack, figures: list[str]) -> None:
    pg = "scen-pg-fresh"
    sh("docker", "rm", "-f", pg, "scen-migrate-a", "scen-migrate-b", check=False)
    sh(
        "docker",
        "run",
        "-d",
        "--name",
        pg,
        "--network",
        NETWORK,
        "-e",
        "POSTGRES_USER=ticket_enhancer",
        "-e",
        f"POSTGRES_PASSWORD={stack.env['POSTGRES_PASSWORD']}",
        "-e",
        "POSTGRES_DB=fresh",
        "local/postgres:15-ci",
    )
    env = stack.app_env(DATABASE_URL=stack.database_url(pg, "fresh"))
    names = ["scen-migrate-a", "scen-migrate-b"]
    # Created first, started together: the two processes race for the schema like two pods' init containers.
    for name in names:
        sh(
            "docker",
            "create",
            "--name",
            name,
            "--network",
            NETWORK,
            "--read-only",
            "--tmpfs",
            "/tmp",
            "--user",
            "10001:10001",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges:true",
            *env,
            stack.image,
            *stack.migrate_command(),
        )
    started = time.monotonic()
    threads = [threading.Thread(target=sh, args=("docker", "start", name)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    codes = [sh("docker", "wait", name, timeout=240).stdout.strip() for name in names]
    elapsed = time.monotonic() - started
    logs = [sh("docker", "logs", name).stdout for name in names]
    try:
        if codes != ["0", "0"]:
            raise ScenarioFailed(f"concurrent migrate exit codes {codes}:\n{logs[0][-600:]}\n{logs[1][-600:]}")
        total, distinct = stack.psql(
            pg, "SELECT count(*), count(DISTINCT (app, name)) FROM django_migrations", "fresh"
        ).split("|")
        if total != distinct:
            raise ScenarioFailed(f"migrations recorded twice: {total} rows, {distinct} distinct")
        waited = sum("Another migrate is running" in text for text in logs)
        applied_by = sum("Applying tickets.0001" in text for text in logs)
        if applied_by != 1:
            raise ScenarioFailed(f"{applied_by} processes applied tickets.0001 (expected exactly one)")
        log(
            f"two migrate containers at once on a fresh database: both exit 0, {total} migrations applied once "
            f"{waited} waited for the lock, {elapsed:.1f}s"
        )
        figures.append(f"two concurrent migrate containers on a fresh database (both done), s: {elapsed:.1f}")
    finally:
        sh("docker", "rm", "-f", "-v", pg, *names, check=False)


def make_tenant(stack: Stack, name: str, sdp_url: str) -> tuple[str, str]:
    slug = f"{name}-{uuid.uuid4().hex[:6]}"
    out = stack.manage("create_tenant", slug, "--name", slug, "--sdp-url", sdp_url, "--sdp-api-key", "scen-key")
    secret = next((word for word in out.split() if word.startswith("whsec_")), None)
    if not secret:
        raise ScenarioFailed(f"create_tenant {slug} printed no secret: {out}")
    return slug, secret


def rolling_upgrade(stack: Stack, tenant: tuple[str, str], figures: list[str]) -> dict[str, str]:
    leaf = stack.psql(
        stack.container("postgres"),
        "SELECT name FROM django_migrations WHERE app = 'enhancements' AND name NOT LIKE '9999%' "
        "ORDER BY name DESC LIMIT 1",
    )
    migration = f'''"""CI fixture: an expand-only release (deploy/ci/scenarios.py): nullable column + new table."""
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("enhancements", "{leaf}")]
    operations = [
        migrations.RunSQL(
            "ALTER TABLE enhancements_enhancement ADD COLUMN ci_expand_flag boolean NULL",
            "ALTER TABLE enhancements_enhancement DROP COLUMN ci_expand_flag",
        ),
        migrations.RunSQL(
            "CREATE TABLE ci_expand_probe (id bigserial PRIMARY KEY, note text NULL)",
            "DROP TABLE ci_expand_probe",
        ),
    ]
'''
    with tempfile.TemporaryDirectory() as context:
        Path(context, "9999_ci_expand.py").write_text(migration)
        Path(context, "Dockerfile").write_text(
            f"FROM {stack.image}\nCOPY 9999_ci_expand.py /app/enhancements/migrations/9999_ci_expand.py\n"
            'LABEL org.opencontainers.image.version="next-ci"\n'
        )
        sh(
            "docker",
            "build",
            "-q",
            "--network",
            "none",
            "-t",
            "ticket-enhancer:next-ci",
            context,
            env={**os.environ, "DOCKER_BUILDKIT": "0"},
        )
    migrate = stack.migrate_command()
    with Load(stack.base, tenant, REQUEST_IDS["upgrade"]) as load:
        time.sleep(2)
        before = len(load.accepted)
        started = time.monotonic()
        result = sh(
            "docker",
            "run",
            "--rm",
            "--network",
            NETWORK,
            "--read-only",
            "--tmpfs",
            "/tmp",
            *stack.app_env(),
            "ticket-enhancer:next-ci",
            *migrate,
            timeout=240,
            check=False,
        )
        migrated = time.monotonic() - started
        if result.returncode != 0:
            raise ScenarioFailed(f"the next release's migrate failed:\n{result.stdout[-800:]}{result.stderr[-800:]}")
        # The next release's web on the expanded schema, beside the old one.
        sh(
            "docker",
            "run",
            "-d",
            "--name",
            "scen-web-next",
            "--network",
            NETWORK,
            "--read-only",
            "--tmpfs",
            "/tmp",
            "--tmpfs",
            "/tmp/prometheus",
            *stack.app_env(),
            "ticket-enhancer:next-ci",
            "gunicorn",
            "project.wsgi:application",
            "-c",
            "deploy/gunicorn.conf.py",
        )
        ready = False
        for _ in range(120):
            probe = sh(
                "docker",
                "exec",
                "scen-web-next",
                "python",
                "-c",
                "import urllib.request as u; print(u.urlopen('http://localhost:8000/api/v1/ready', timeout=3).status)",
                check=False,
            )
            if probe.stdout.strip() == "200":
                ready = True
                break
            time.sleep(0.5)
        time.sleep(2)
    sh("docker", "rm", "-f", "scen-web-next", check=False)
    if not ready:
        raise ScenarioFailed("the next release's web did not become ready on the expanded schema")
    if load.errors or load.refused:
        raise ScenarioFailed(
            f"the old release failed webhooks during the upgrade: {load.errors[:5]} {load.refused[:5]}"
        )
    if "Applying enhancements.9999_ci_expand... OK" not in result.stdout:
        raise ScenarioFailed(f"the expand migration was not applied: {result.stdout[-400:]}")
    during = len(load.accepted) - before
    log(
        f"rolling upgrade: the old web answered {len(load.accepted)} webhooks with 202 ({during} while and after the "
        f"next release migrated in {migrated:.1f}s), 0 errors; the next release's web is ready on the new schema"
    )
    figures.append(f"rolling upgrade: next release's migrate under load, s: {migrated:.1f}")
    return load.accepted


def graceful_shutdown(stack: Stack, tenant: tuple[str, str], figures: list[str]) -> dict[str, str]:
    web, worker = stack.container("web"), stack.container("worker")
    accepted: dict[str, str] = {}
    with Load(stack.base, tenant, REQUEST_IDS["slow"]) as load:
        time.sleep(3)
        started = time.monotonic()
        sh("docker", "kill", "--signal", "TERM", web)
        sh("docker", "wait", web, timeout=60)
        web_stop = time.monotonic() - started
        time.sleep(1)
        sh("docker", "start", web)
        wait_ready(stack.base)
        time.sleep(3)
        in_flight = stack.psql(
            stack.container("postgres"), "SELECT count(*) FROM enhancements_enhancement WHERE status = 'running'"
        )
        started = time.monotonic()
        sh("docker", "kill", "--signal", "TERM", worker)
        sh("docker", "wait", worker, timeout=400)
        worker_stop = time.monotonic() - started
        exit_code = sh("docker", "inspect", "--format", "{{.State.ExitCode}}", worker).stdout.strip()
        time.sleep(2)
    accepted.update(load.accepted)
    sh("docker", "start", worker)
    if load.errors:
        raise ScenarioFailed(f"webhooks answered with errors during shutdown: {load.errors[:5]}")
    log(
        f"SIGTERM web: exited in {web_stop:.1f}s; SIGTERM worker: exited {exit_code} in {worker_stop:.1f}s; "
        f"{in_flight} tasks running at the worker's SIGTERM; {len(accepted)} webhooks accepted, "
        f"{len(load.refused)} not acknowledged while web was down ({dict(Counter(load.refused))}; SDP retries those)"
    )
    figures.append(f"web SIGTERM to exit under load, s: {web_stop:.1f}")
    figures.append(f"worker SIGTERM to exit with tasks in flight, s: {worker_stop:.1f}")
    return accepted


def wait_ready(base: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/api/v1/ready", timeout=3) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise ScenarioFailed(f"{base} not ready after {timeout:g}s")


def nothing_lost(stack: Stack, accepted: dict[str, str], timeout: float = 150) -> None:
    """Every acknowledged webhook's enhancement ends posted, with exactly one note in the SDP fake."""
    ids = sorted(set(accepted.values()))
    id_list = ",".join(f"'{i}'" for i in ids)
    deadline = time.monotonic() + timeout
    counts = ""
    while time.monotonic() < deadline:
        counts = stack.psql(
            stack.container("postgres"),
            f"SELECT status, count(*) FROM enhancements_enhancement WHERE id IN ({id_list}) GROUP BY status ORDER BY 1",
        )
        if counts == f"posted|{len(ids)}":
            break
        time.sleep(2)
    else:
        raise ScenarioFailed(f"of {len(ids)} acknowledged webhooks, not all were posted after {timeout:g}s: {counts!r}")
    notes = stack.psql(
        stack.container("postgres"),
        f"SELECT count(DISTINCT sdp_note_id) FROM enhancements_enhancement WHERE id IN ({id_list})",
    )
    if notes != str(len(ids)):
        raise ScenarioFailed(f"{len(ids)} enhancements posted, but {notes} distinct SDP notes")
    log(f"no webhook or task lost: all {len(ids)} acknowledged webhooks ended 'posted', one SDP note each")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--figures")
    parser.add_argument("--only", action="append", choices=["migrate", "upgrade", "shutdown"])
    args = parser.parse_args(argv)
    stack = Stack(args.image)
    figures: list[str] = []
    only = set(args.only or ["migrate", "upgrade", "shutdown"])
    try:
        check_grace_periods()
        if "migrate" in only:
            concurrent_migrate(stack, figures)
        accepted: dict[str, str] = {}
        if only & {"upgrade", "shutdown"}:
            start_slow_sdp(stack)
            sdp_url = "http://sdp-slow.ci.test:8081"
            if "upgrade" in only:
                accepted.update(rolling_upgrade(stack, make_tenant(stack, "upgrade", sdp_url), figures))
            if "shutdown" in only:
                accepted.update(graceful_shutdown(stack, make_tenant(stack, "slow", sdp_url), figures))
            nothing_lost(stack, accepted)
    except (ScenarioFailed, subprocess.TimeoutExpired) as error:
        print(f"FAIL (scenarios): {error}", file=sys.stderr, flush=True)
        return 1
    finally:
        sh("docker", "rm", "-f", "scen-sdp", "scen-web-next", check=False)
    if args.figures:
        with open(args.figures, "a", encoding="utf-8") as out:
            out.writelines(line + "\n" for line in figures)
    for line in figures:
        print(line)
    return 0


def start_slow_sdp(stack: Stack) -> None:
    """An SDP fake that answers after 0.15 s, so tasks are in flight when the worker gets SIGTERM."""
    sh("docker", "rm", "-f", "scen-sdp", check=False)
    seed = Path(os.environ["CI_RUN"], "scen-seed.json")
    requests = [
        {"id": rid, "subject": "VPN drops", "status": {"name": "Open"}} for ids in REQUEST_IDS.values() for rid in ids
    ]
    seed.write_text(json.dumps({"requests": requests}))
    seed.chmod(0o644)
    sh(
        "docker",
        "run",
        "-d",
        "--name",
        "scen-sdp",
        "--network",
        NETWORK,
        "--network-alias",
        "sdp-slow.ci.test",
        "--read-only",
        "-e",
        "PYTHONDONTWRITEBYTECODE=1",
        "-u",
        "65534:65534",
        "-v",
        f"{REPO / 'tests'}:/src/tests:ro",
        "-v",
        f"{seed}:/seed.json:ro",
        "-w",
        "/src",
        "local/python:3.12-ci",
        "python",
        "-m",
        "tests.fakes.sdp",
        "--host",
        "0.0.0.0",
        "--port",
        "8081",
        "--api-key",
        "scen-key",
        "--latency",
        "0.3",
        "--seed",
        "/seed.json",
    )


def check_grace_periods() -> None:
    """The worker's terminationGracePeriodSeconds (and compose's stop_grace_period) exceed Q_TIMEOUT."""
    rendered = sh("kubectl", "kustomize", "deploy/k8s/overlays/production").stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    config = next(d["data"] for d in docs if d["kind"] == "ConfigMap")
    q_timeout = int(config["Q_TIMEOUT"])
    worker = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "worker")
    grace = int(worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])
    compose_grace = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]["worker"]["stop_grace_period"]
    if grace <= q_timeout or int(str(compose_grace).rstrip("s")) <= q_timeout:
        raise ScenarioFailed(f"worker grace {grace}s / compose {compose_grace} does not cover Q_TIMEOUT {q_timeout}s")
    log(
        f"worker terminationGracePeriodSeconds {grace}s and compose stop_grace_period {compose_grace} "
        f"> Q_TIMEOUT {q_timeout}s"
    )


if __name__ == "__main__":
    sys.exit(main())
