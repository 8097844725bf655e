"""Management commands used by the containers."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.common import (
    manage,
    redis_reachable,
)
from tests.processes import free_port, start_worker, stop_worker, wait_for


def test_wait_for_db_succeeds_when_the_database_answers(isolated_env: dict[str, str]) -> None:
    result = manage("wait_for_db", "--timeout", "10", env=isolated_env)
    assert result.returncode == 0, result.stderr
    assert "is available" in result.stdout


def test_wait_for_db_gives_up_after_the_timeout(isolated_env: dict[str, str]) -> None:
    pytest.importorskip("psycopg")
    env = {**isolated_env, "DATABASE_URL": f"postgres://nobody@127.0.0.1:{free_port()}/nothing"}
    started = time.monotonic()
    result = manage("wait_for_db", "--timeout", "2", "--interval", "0.2", env=env)
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert "still unavailable after 2s" in result.stderr
    assert result.stderr.count("retrying in") >= 2, result.stderr
    assert elapsed < 30


@pytest.fixture(params=["orm", "redis"])
def broker_env(request: pytest.FixtureRequest, isolated_env: dict[str, str]) -> dict[str, str]:
    """Return a migrated environment for the ORM broker (SQLite) or the Redis broker."""
    env = dict(isolated_env)
    if request.param == "redis":
        url = os.environ.get("DEPLOY_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
        if not redis_reachable(url):
            pytest.skip(f"no Redis at {url} (set DEPLOY_TEST_REDIS_URL)")
        env["REDIS_URL"] = url
    result = manage("migrate", "--noinput", env=env, timeout=180)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    result = manage("createcachetable", env=env)
    assert result.returncode == 0, result.stderr
    return env


def children(pid: int) -> list[int]:
    """Return the pids of the processes whose parent is `pid` (Linux /proc)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        match = re.search(r"^PPid:\s+(\d+)$", text, flags=re.MULTILINE)
        if match and int(match.group(1)) == pid:
            found.append(int(status.parent.name))
    return found


@pytest.fixture
def qcluster(broker_env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    # Its own process group (tests.processes.start): SIGSTOP/SIGCONT reach the whole cluster.
    process = start_worker(broker_env, tmp_path / "qcluster.log")
    try:
        yield process
    finally:
        # As Kubernetes and Docker do, after resuming a cluster a test stopped. A cluster that was SIGSTOPped
        # and resumed may not finish its orderly stop; what matters was tested already, so do not wait long.
        stop_worker(process, timeout=10)


def worker_health(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return manage("worker_health", *args, env=env, timeout=60)


@pytest.mark.processes
@pytest.mark.timeout(240)
def test_worker_health_detects_a_hung_cluster(
    broker_env: dict[str, str], qcluster: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    env = broker_env
    # Running and reporting: healthy.
    ok = wait_for(
        lambda: (r := worker_health(env, "--max-age", "5")).returncode == 0 and r,
        timeout=60,
        what="the cluster to report",
    )
    assert ok.stdout.startswith("OK: cluster") and socket.gethostname() in ok.stdout, ok.stdout

    # One stopped worker process: the guard loop still reports, the probe must not be fooled.
    sentinel = wait_for(lambda: children(qcluster.pid), timeout=10, what="the sentinel process")[0]
    workers = wait_for(lambda: children(sentinel), timeout=10, what="the worker processes")
    os.kill(workers[0], signal.SIGSTOP)
    try:
        stopped = worker_health(env, "--max-age", "5")
        assert stopped.returncode == 1, stopped.stdout + stopped.stderr
        assert "is stopped" in stopped.stderr
        assert len(stopped.stderr.strip().splitlines()) == 1
    finally:
        os.kill(workers[0], signal.SIGCONT)
    wait_for(lambda: worker_health(env, "--max-age", "5").returncode == 0, timeout=20, what="recovery after SIGCONT")

    # The whole cluster hung (every process stopped): failing at once, and still failing once its
    # status record expired and --max-age passed.
    os.killpg(qcluster.pid, signal.SIGSTOP)
    hung_at = time.monotonic()
    # Usually at once ("sentinel ... is stopped"); on a loaded machine the 3-second status record
    # may already have lapsed, and then the grace period runs out after --max-age.
    first = wait_for(
        lambda: (r := worker_health(env, "--max-age", "5")).returncode == 1 and r, timeout=20, what="the probe to fail"
    )
    assert "is stopped" in first.stderr or "no Django-Q cluster on host" in first.stderr, first.stderr
    time.sleep(max(0.0, 6 - (time.monotonic() - hung_at)))
    later = worker_health(env, "--max-age", "5")
    assert later.returncode == 1
    assert later.stderr.startswith(f"UNHEALTHY: no Django-Q cluster on host {socket.gethostname()}"), later.stderr
    assert len(later.stderr.strip().splitlines()) == 1

    # Resumed: healthy again.
    os.killpg(qcluster.pid, signal.SIGCONT)
    wait_for(lambda: worker_health(env, "--max-age", "5").returncode == 0, timeout=30, what="recovery after SIGCONT")


def test_worker_health_fails_when_no_cluster_runs(isolated_env: dict[str, str]) -> None:
    result = manage("migrate", "--noinput", env=isolated_env, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert manage("createcachetable", env=isolated_env).returncode == 0
    result = worker_health(isolated_env, "--host", "pod-that-does-not-exist")
    assert result.returncode == 1
    assert result.stderr.strip() == "UNHEALTHY: no Django-Q cluster on host pod-that-does-not-exist has reported"


def test_worker_health_grace_period_is_max_age(isolated_env: dict[str, str], tmp_path: Path) -> None:
    """A cluster whose record lapsed (busy host, broker blip) passes until --max-age since its last report."""
    assert manage("migrate", "--noinput", env=isolated_env, timeout=180).returncode == 0
    assert manage("createcachetable", env=isolated_env).returncode == 0
    state = Path(isolated_env["WORKER_HEALTH_STATE_FILE"])
    state.write_text(json.dumps({"host": "pod-a", "last_healthy": time.time() - 20}))
    # The age grows while each command starts (seconds on a loaded machine): read it, don't assume it.
    recent = worker_health(isolated_env, "--host", "pod-a", "--max-age", "3600")
    assert recent.returncode == 0, recent.stderr
    ok = re.match(r"OK: last healthy report (\d+)s ago \(max 3600s\); now: no Django-Q cluster", recent.stdout)
    assert ok and int(ok.group(1)) >= 20, recent.stdout
    stale = worker_health(isolated_env, "--host", "pod-a", "--max-age", "10")
    assert stale.returncode == 1
    too_old = re.search(r"last healthy report (\d+)s ago \(max 10s\)$", stale.stderr.strip())
    assert too_old and int(too_old.group(1)) >= 20, stale.stderr
    other = worker_health(isolated_env, "--host", "pod-b", "--max-age", "60")
    assert other.returncode == 1, "a report remembered for another host must not count"
