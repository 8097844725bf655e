"""The smoke test against a real local stack: PostgreSQL, Redis, the migrations, gunicorn and qcluster.

They are started with the containers' own commands (read from compose.yaml), with the SDP fake.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.common import (
    BIN,
    ROOT,
    compose_command,
    interpolate,
    load_compose,
    manage,
    redis_reachable,
)
from tests.processes import free_port, start, stop_worker, wait_for


def postgres_admin_url() -> str:
    return os.environ.get("DEPLOY_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def stack_database() -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg")
    admin = postgres_admin_url()
    name = f"te_smoke_{os.getpid()}_{int(time.time())}"
    try:
        connection = psycopg.connect(admin, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        pytest.skip(f"no PostgreSQL at {admin} (set DEPLOY_TEST_PG_ADMIN_URL): {exc}")
    with connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    url = admin.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def stack_redis() -> Iterator[str]:
    url = os.environ.get("DEPLOY_TEST_STACK_REDIS_URL", "redis://127.0.0.1:6379/13")
    if not redis_reachable(url):
        pytest.skip(f"no Redis at {url} (set DEPLOY_TEST_STACK_REDIS_URL)")
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


@pytest.mark.processes
@pytest.mark.timeout(420)
def test_smoke_test_passes_against_a_local_stack(stack_database: str, stack_redis: str, tmp_path: Path) -> None:
    from cryptography.fernet import Fernet

    from tests.fakes.sdp import FakeServiceDesk

    compose = load_compose()
    services = compose["services"]
    port = free_port()
    env = {name: interpolate(str(value)) for name, value in services["web"]["environment"].items()}
    env.update(
        PATH=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
        HOME=os.environ.get("HOME", str(tmp_path)),
        SECRET_KEY="smoke-" + "k" * 50,
        FIELD_ENCRYPTION_KEY=Fernet.generate_key().decode(),
        DATABASE_URL=stack_database,
        REDIS_URL=stack_redis,
        ALLOWED_HOSTS="127.0.0.1,localhost",
        PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
        SDP_ALLOW_INSECURE_URLS="true",
        LLM_PROVIDER="offline",
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prometheus"),
        # Only the listening address differs from the container (no port clash on a shared machine).
        GUNICORN_BIND=f"127.0.0.1:{port}",
        WORKER_HEALTH_STATE_FILE=str(tmp_path / "worker-health.json"),
    )
    (tmp_path / "prometheus").mkdir()

    migrate = subprocess.run(
        compose_command(services["migrate"]), cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
    )
    assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]

    request_id = f"smoke-{uuid.uuid4().hex[:10]}"
    with FakeServiceDesk(auth="authtoken", api_key="smoke-sdp-key") as sdp:
        sdp.add_request({"id": request_id, "subject": "Smoke test request", "status": {"name": "Open"}})
        tenant = manage(
            "create_tenant", "smoke", "--name", "Smoke", "--sdp-url", sdp.url, "--sdp-api-key", "smoke-sdp-key",
            env=env,
        )  # fmt: skip
        assert tenant.returncode == 0, tenant.stderr
        secret = re.search(r"(whsec_[A-Za-z0-9+/=]+)", tenant.stdout)
        assert secret, tenant.stdout
        token = manage(
            "shell",
            "-c",
            "from enhancements.services import api_token_create; from tickets.models import Tenant; "
            "print(api_token_create(tenant=Tenant.objects.get(slug='smoke'), name='smoke test')[1])",
            env=env,
        )
        assert token.returncode == 0, token.stderr
        api_token = token.stdout.strip().splitlines()[-1]

        web = start(compose_command(services["web"]), env=env, log=tmp_path / "web.log")
        worker = start(compose_command(services["worker"]), env=env, log=tmp_path / "worker.log")
        try:
            wait_for(lambda: web_answers_health(port), timeout=90, what="gunicorn to answer /health")
            smoke = subprocess.run(
                [
                    sys.executable, "runbook/smoke_test.py",
                    "--base-url", f"http://127.0.0.1:{port}",
                    "--tenant", "smoke",
                    "--secret", secret.group(1),
                    "--api-token", api_token,
                    "--request-id", request_id,
                    "--expect-note",
                    "--timeout", "120",
                ],
                cwd=ROOT, capture_output=True, text=True, timeout=200,
            )  # fmt: skip
            logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in (tmp_path.glob("*.log")))
            assert smoke.returncode == 0, smoke.stdout + smoke.stderr + logs
            assert re.search(r"^6 passed, 0 failed, 2 skipped$", smoke.stdout, flags=re.MULTILINE), smoke.stdout
            assert len(sdp.notes[request_id]) == 1
            assert sdp.notes[request_id][0]["show_to_requester"] is False

            # The same run with --json, against the already-enhanced request: now a duplicate, not 202.
            again = subprocess.run(
                [
                    sys.executable, "runbook/smoke_test.py", "--json",
                    "--base-url", f"http://127.0.0.1:{port}", "--tenant", "smoke",
                    "--secret", secret.group(1), "--request-id", request_id,
                ],
                cwd=ROOT, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            report = json.loads(again.stdout)
            assert again.returncode == 1 and report["ok"] is False
            webhook = next(c for c in report["checks"] if c["name"] == "webhook")
            assert webhook["status"] == "FAIL" and "HTTP 200" in webhook["detail"]

            health = manage("worker_health", env=env)
            assert health.returncode == 0, health.stderr
        finally:
            stop_worker(web)
            stop_worker(worker)


def web_answers_health(port: int) -> bool:
    """Return True once GET /health answers 200 (the web server is up)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False
