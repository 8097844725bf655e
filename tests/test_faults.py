"""Faults with real processes: every accepted webhook ends as exactly one SDP note, or a visible failed row.

gunicorn and qcluster run against the test database (tests/processes.py); ServiceDesk Plus and the LLM are the
loopback fakes; PostgreSQL is reached through a TcpProxy the test cuts; Redis is a private redis-server the test
stops and starts (never the machine's shared one). Retries need the sweep: tests that wait for one retry use the
real every-minute schedule (the django-q scheduler looks every 30 s); tests that need several use a sweeper
process that calls the same task every half second.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from django.conf import settings
from django.db import connection
from django.utils import timezone
from django_q.models import Schedule

from enhancements.models import Enhancement
from tests import processes
from tests.fakes.openai import FakeOpenAI
from tests.fakes.sdp import FakeServiceDesk
from tests.fakes.tcpproxy import TcpProxy
from tests.processes import (
    Stack,
    free_port,
    process_env,
    running_stack,
    start,
    start_worker,
    stop,
    stop_worker,
    wait_for,
)
from tests.signing import sign_webhook
from tickets.services import tenant_create_or_update

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]

T = TypeVar("T")
ON_POSTGRES = connection.vendor == "postgresql"
REDIS_SERVER = shutil.which("redis-server")
needs_postgres = pytest.mark.skipif(
    not ON_POSTGRES, reason="a PostgreSQL outage needs PostgreSQL; this run is on SQLite (the PostgreSQL run covers it)"
)
needs_redis = pytest.mark.skipif(
    not (settings.REDIS_URL and REDIS_SERVER),
    reason="Redis-broker faults run when REDIS_URL is set (the PostgreSQL + Redis run) and redis-server is installed",
)

# Small values so recovery fits in a test; the contract is kept: STUCK_AFTER > Q_TIMEOUT, so the sweep never
# takes a row back from a task that may still be running.
FAST = {
    "Q_TIMEOUT": "15",
    "ENHANCEMENT_STUCK_AFTER": "18",
    "ENHANCEMENT_RETRY_BASE": "1",
    "ENHANCEMENT_RETRY_MAX": "2",
    "SDP_TIMEOUT": "3",
}
Q_GRACE = 30  # seconds a stopping worker gets, like terminationGracePeriodSeconds; tasks here take ~3 s
SWEEPER = """
import time
import django
django.setup()
from django.db import connections
from enhancements.tasks import sweep
while True:
    try:
        sweep()
    except Exception as exc:  # a dependency outage: try again, as the scheduler would
        print("sweep failed:", exc, flush=True)
        connections.close_all()
    time.sleep(0.5)
"""


class PrivateRedis:
    """A throwaway redis-server on a free port, without persistence, that a test may stop and start."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Return the redis:// URL of this server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server (empty: nothing survives a stop) and wait until it answers."""
        assert REDIS_SERVER
        command = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = start([*command, "--dir", str(self.workdir)], env=dict(os.environ), log=self.workdir / "redis.log")

        def answers() -> bool:
            client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False
            finally:
                client.close()

        wait_for(answers, timeout=10, interval=0.05, what=f"redis-server on port {self.port}")

    def stop(self) -> None:
        """Stop the server; its data is gone."""
        stop(self.proc, timeout=10)
        self.proc = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """Return a running private Redis (the shared one on 6379 is never stopped)."""
    if not REDIS_SERVER:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def broker_url(tmp_path: Path) -> Iterator[str]:
    """Return the broker for the processes: a private Redis on the Redis run, else "" (the ORM broker)."""
    if not (settings.REDIS_URL and REDIS_SERVER):
        yield ""
        return
    # Private, so no other test session on this machine can take our tasks off a shared queue.
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@dataclass
class Rig:
    """The running web server, the workers and what a test needs to send webhooks and read the outcome."""

    tmp_path: Path
    env: dict[str, str]
    stack: Stack
    sdp: FakeServiceDesk
    slug: str
    secret: str
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    extra: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_worker(self) -> subprocess.Popen[bytes]:
        """Start one more qcluster."""
        proc = start_worker(self.env, self.tmp_path / f"worker{len(self.workers)}.log")
        self.workers.append(proc)
        return proc

    def start_sweeper(self) -> None:
        """Run the sweep task every half second in its own process (a fast stand-in for the schedule)."""
        self.extra.append(start([sys.executable, "-c", SWEEPER], env=self.env, log=self.tmp_path / "sweeper.log"))

    def webhook(self, sdp_id: str, subject: str | None = None) -> tuple[int, dict[str, str], Any]:
        """Send a signed request_created webhook for a new SDP request; return status, headers and body."""
        request = {
            "id": sdp_id,
            "subject": subject or f"VPN drops every 10 minutes on laptop {sdp_id}",
            "description": "<p>Since this morning the VPN disconnects every ten minutes.</p>",
        }
        self.sdp.add_request(request)
        body = json.dumps({"event": "request_created", "request": request}).encode()
        headers = sign_webhook(self.secret, body)
        return self.stack.request(
            "POST", f"/webhook/servicedesk/{self.slug}/", body, {"Content-Type": "application/json", **headers}
        )

    def accepted(self, sdp_id: str, subject: str | None = None) -> str:
        """Send a webhook that must be accepted; return the enhancement id."""
        status, _, answer = self.webhook(sdp_id, subject)
        assert status == 202, (status, answer, self.logs())
        return answer["enhancement_id"]

    def logs(self, lines: int = 40) -> str:
        """Return the tail of every process log, for failure messages."""
        parts = []
        for log in sorted(self.tmp_path.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def wait(self, predicate: Callable[[], T], timeout: float, what: str) -> T:
        """Return the predicate's first truthy value, polling; fail with the process logs after timeout."""
        return wait_for(predicate, timeout=timeout, what=what, interval=0.2, details=self.logs)

    def wait_finished(self, ids: list[str], timeout: float) -> dict[str, Enhancement]:
        """Wait until every enhancement is posted or failed; return them by id."""
        final = (Enhancement.Status.POSTED, Enhancement.Status.FAILED)

        def done() -> dict[str, Enhancement] | None:
            rows = {str(e.pk): e for e in Enhancement.objects.filter(pk__in=ids).select_related("ticket")}
            return rows if len(rows) == len(ids) and all(e.status in final for e in rows.values()) else None

        return self.wait(done, timeout, f"enhancements {ids} posted or failed")

    def note_posts(self, sdp_id: str) -> list[float]:
        """Return when the fake received each note POST for a request (monotonic seconds)."""
        path = f"/api/v3/requests/{sdp_id}/notes"
        return [r.received_at for r in self.sdp.requests_log if r.method == "POST" and r.path == path]

    def assert_one_note(self, row: Enhancement) -> None:
        """Assert the enhancement is posted as exactly one note carrying its marker."""
        notes = self.sdp.notes.get(row.ticket.sdp_id, [])
        assert row.status == Enhancement.Status.POSTED, (row.status, row.error)
        assert len(notes) == 1, f"{len(notes)} notes on request {row.ticket.sdp_id}"
        assert f"ticket-enhancer:{row.pk}" in notes[0]["description"]
        assert row.sdp_note_id == str(notes[0]["id"])


def schedule_sweep() -> None:
    """Put the every-minute sweep schedule in place, due now (a flushed test database has lost it)."""
    Schedule.objects.update_or_create(
        name="enhancements-sweep",
        defaults={
            "func": "enhancements.tasks.sweep",
            "schedule_type": Schedule.MINUTES,
            "minutes": 1,
            "repeats": -1,
            "next_run": timezone.now(),
        },
    )


@contextmanager
def rig(
    tmp_path: Path, sdp: FakeServiceDesk, *, broker_url: str, workers: int = 1, sweeper: bool = False, **env: str
) -> Iterator[Rig]:
    """Run gunicorn (+ qcluster, + a sweeper) for a tenant whose SDP is the fake; stop them all at the end."""
    # The rig's tickets share one text: with clustering on they would be one storm and get follow-up notes,
    # which these tests (one note per request under faults) do not count.
    tenant = tenant_create_or_update(
        slug="faults", name="Faults", sdp_base_url=sdp.url, sdp_api_key=sdp.api_key, cluster_threshold=1000
    )
    overrides = {**FAST, "REDIS_URL": broker_url, **env}
    env_ = process_env(**overrides)
    workers_: list[subprocess.Popen[bytes]] = []
    extra: list[subprocess.Popen[bytes]] = []

    def stop_all() -> None:
        for proc in extra:
            stop(proc, timeout=5)
        for proc in workers_:
            stop_worker(proc)

    with ExitStack() as cleanup:
        cleanup.callback(stop_all)
        # Workers first: they boot while the web server does, which halves the wait on two cores.
        for number in range(workers):
            workers_.append(start_worker(env_, tmp_path / f"worker{number}.log"))
        stack = cleanup.enter_context(running_stack(tmp_path, worker=False, **overrides))
        harness = Rig(tmp_path, env_, stack, sdp, "faults", tenant.secret, workers_, extra)
        if sweeper:
            harness.start_sweeper()
        yield harness


# --- ServiceDesk Plus faults ------------------------------------------------------------------------------------
def test_sdp_faults_retry_with_backoff_post_once_and_401_fails_clearly(tmp_path, sdp, broker_url):
    notes = "/api/v3/requests/{}/notes"
    sdp.fail_next(2, 500, path_contains=notes.format("7001"), method="POST")
    # The note is stored, but the answer comes after the client's 3 s timeout: an unclear outcome.
    sdp.fail_next(1, "timeout", path_contains=notes.format("7002"), method="POST", delay=5, process=True)
    # Nothing is stored and the answer comes too late: the same unclear outcome from our side.
    sdp.fail_next(1, "timeout", path_contains=notes.format("7003"), method="POST", delay=5, process=False)
    sdp.fail_next(1, 429, path_contains=notes.format("7004"), method="POST", retry_after=1)
    sdp.fail_next(1, 429, path_contains=notes.format("7005"), method="POST", retry_after=12)
    sdp.fail_next(1, 401, path_contains=notes.format("7006"), method="POST")
    with rig(tmp_path, sdp, broker_url=broker_url, workers=1, sweeper=True, Q_WORKERS="4") as r:
        ids = {sdp_id: r.accepted(sdp_id) for sdp_id in ("7001", "7002", "7003", "7004", "7005", "7006")}
        rows = r.wait_finished(list(ids.values()), timeout=60)
        by_ticket = {sdp_id: rows[pk] for sdp_id, pk in ids.items()}

        for sdp_id in ("7001", "7002", "7003", "7004", "7005"):
            r.assert_one_note(by_ticket[sdp_id])
        # 500 twice: three attempts, the retries spaced by backoff (at least base/2 = 0.5 s).
        posts = r.note_posts("7001")
        assert by_ticket["7001"].attempts == 3 and len(posts) == 3
        assert min(b - a for a, b in zip(posts, posts[1:], strict=False)) >= 0.5
        # The timed-out post that reached SDP is found by its marker and never sent again.
        assert by_ticket["7002"].attempts == 2 and len(r.note_posts("7002")) == 1
        assert len(r.note_posts("7003")) == 2
        # A short Retry-After is waited out inside the attempt; a long one goes back to the queue, honoured.
        short, long_ = r.note_posts("7004"), r.note_posts("7005")
        assert by_ticket["7004"].attempts == 1 and short[1] - short[0] >= 1.0
        assert by_ticket["7005"].attempts == 2 and long_[1] - long_[0] >= 12.0
        refused = by_ticket["7006"]
        assert refused.status == Enhancement.Status.FAILED and refused.attempts == 1
        assert "refused our credentials" in refused.error and "API key" in refused.error
        assert not r.sdp.notes.get("7006") and len(r.note_posts("7006")) == 1


# --- LLM faults -------------------------------------------------------------------------------------------------
def test_llm_faults_are_retried_then_the_note_is_the_labelled_offline_one(tmp_path, sdp, broker_url):
    with FakeOpenAI() as llm:
        llm_env = {
            "LLM_PROVIDER": "openai",
            "OPENAI_API_KEY": llm.api_key,
            "OPENAI_BASE_URL": llm.url,
            "OPENAI_MODEL": "fake-model",
            "LLM_TIMEOUT": "1",
        }
        # (failure, how many, LLM calls expected, whether the LLM's answer is used in the end)
        cases = [
            ("timeout", 3, 3, False),
            (429, 3, 3, False),
            (500, 3, 3, False),
            ("schema_violation", 2, 2, False),
            # Twice no JSON at all under json_schema: the server ignores that mode, so JSON mode is asked next
            # (enhancements/llm_structured.py) and its answer is used.
            ("invalid_json", 2, 3, True),
            (503, 2, 3, True),
        ]
        with rig(tmp_path, sdp, broker_url=broker_url, **llm_env) as r:
            for number, (failure, count, calls, recovers) in enumerate(cases):
                sdp_id = f"800{number}"
                # The fake cannot tell tickets apart, so one at a time.
                llm.fail_next(count, failure, retry_after=0.2 if failure == 429 else None, delay=3)
                before = len(llm.requests_log)
                pk = r.accepted(sdp_id)
                row = r.wait_finished([pk], timeout=30)[pk]
                r.assert_one_note(row)
                note = r.sdp.notes[sdp_id][0]["description"]
                assert len(llm.requests_log) - before == calls, failure
                if recovers:
                    assert (row.provider, row.error) == ("openai", ""), failure
                    assert "offline fallback" not in note
                else:
                    assert row.provider == "offline", failure
                    assert row.error.startswith("LLM unavailable, offline note used:"), row.error
                    assert "offline fallback: the LLM was unavailable" in note, failure
                assert llm.pending_failures() == 0


# --- worker killed, worker stopped ----------------------------------------------------------------------------
def test_worker_killed_mid_post_is_recovered_by_the_scheduled_sweep_with_one_note(tmp_path, sdp, broker_url):
    schedule_sweep()
    # SDP stores the note at once but answers only after 60 s: the worker dies between SDP's write and ours.
    sdp.fail_next(1, "timeout", path_contains="/requests/9001/notes", method="POST", delay=60, process=True)
    with rig(tmp_path, sdp, broker_url=broker_url, workers=0, SDP_TIMEOUT="30") as r:
        first = r.start_worker()
        pk = r.accepted("9001")
        r.wait(lambda: r.sdp.notes.get("9001"), 20, "the note reached SDP")
        stop(first, signal.SIGKILL, timeout=10)  # the process and its children, as the OOM killer would
        row = Enhancement.objects.get(pk=pk)
        assert row.status == Enhancement.Status.RUNNING and row.post_started_at is not None
        # A new worker; nothing else: its scheduler runs the sweep, which recovers the row.
        started = time.monotonic()
        r.start_worker()
        row = r.wait_finished([pk], timeout=80)[pk]
        print(f"recovered by the scheduled sweep {time.monotonic() - started:.1f}s after the new worker started")
        r.assert_one_note(row)
        assert row.attempts == 2 and len(r.note_posts("9001")) == 1


def test_sigterm_lets_running_and_prefetched_tasks_finish_nothing_lost(tmp_path, sdp, broker_url):
    with FakeOpenAI(latency=3.0) as llm:
        llm_env = {
            "LLM_PROVIDER": "openai",
            "OPENAI_API_KEY": llm.api_key,
            "OPENAI_BASE_URL": llm.url,
            "OPENAI_MODEL": "fake-model",
            "LLM_TIMEOUT": "10",
        }
        with rig(tmp_path, sdp, broker_url=broker_url, workers=1, Q_WORKERS="2", **llm_env) as r:
            ids = [r.accepted(f"950{n}") for n in range(4)]
            r.wait(lambda: len(llm.requests_log) >= 2, 20, "two tasks running")
            worker = r.workers[0]
            worker.send_signal(signal.SIGTERM)  # what Kubernetes sends to the container's main process
            worker.wait(timeout=Q_GRACE)
            statuses = dict(Enhancement.objects.filter(pk__in=ids).values_list("pk", "status"))
            # Finished, or handed back to the queue; never left running.
            assert set(statuses.values()) <= {Enhancement.Status.POSTED, Enhancement.Status.QUEUED}, statuses
            assert sum(s == Enhancement.Status.POSTED for s in statuses.values()) >= 2, statuses
            r.start_worker()
            r.start_sweeper()
            rows = r.wait_finished(ids, timeout=30)
            for row in rows.values():
                r.assert_one_note(row)
            assert len(llm.requests_log) == len(ids), "an enhancement was generated twice"


# --- PostgreSQL outage ----------------------------------------------------------------------------------------
@needs_postgres
def test_postgres_outage_answers_503_says_so_and_resumes_by_itself_without_a_second_note(tmp_path, sdp, broker_url):
    db = connection.settings_dict
    with TcpProxy(upstream=(db.get("HOST") or "127.0.0.1", int(db.get("PORT") or 5432))) as proxy:
        proxied = processes.test_database_url().replace(f":{db.get('PORT') or 5432}/", f":{proxy.port}/")
        schedule_sweep()
        sdp.fail_next(1, "timeout", path_contains="/requests/9101/notes", method="POST", delay=3, process=True)
        with rig(tmp_path, sdp, broker_url=broker_url, DATABASE_URL=proxied, SDP_TIMEOUT="10") as r:
            # A post is in flight when the database goes: SDP has the note, we cannot record it.
            in_flight = r.accepted("9101")
            r.wait(lambda: r.sdp.notes.get("9101"), 20, "the note reached SDP")
            proxy.cut()
            cut_at = time.monotonic()

            status, headers, body = r.webhook("9102")
            assert status == 503, body
            assert body["error"] == "unavailable" and int(headers["Retry-After"]) > 0
            assert "Traceback" not in json.dumps(body)
            status, _, body = r.stack.request("GET", "/health")
            assert (status, body["database"]) == (503, "unreachable")
            status, _, body = r.stack.request("GET", "/api/v1/ready")
            assert (status, body["status"], body["database"]) == (503, "not ready", "unreachable")
            time.sleep(max(0.0, 4 - (time.monotonic() - cut_at)))  # the in-flight post's answer arrives meanwhile

            proxy.restore()
            restored_at = time.monotonic()
            r.wait(lambda: r.stack.request("GET", "/health")[0] == 200, 15, "health back after the outage")
            print(f"/health healthy {time.monotonic() - restored_at:.1f}s after the database returned")
            # SDP retries the refused delivery; the same web and worker processes serve it.
            status, _, body = r.webhook("9102")
            assert status == 202, body
            rows = r.wait_finished([body["enhancement_id"], in_flight], timeout=80)
            for row in rows.values():
                r.assert_one_note(row)
            assert len(r.note_posts("9101")) == 1
            assert r.workers[0].poll() is None, "the worker died during the outage"


# --- Redis outage ---------------------------------------------------------------------------------------------
@needs_redis
def test_redis_down_webhooks_still_accepted_and_processed_once_it_returns(tmp_path, sdp, private_redis):
    schedule_sweep()
    with rig(tmp_path, sdp, broker_url=private_redis.url) as r:
        private_redis.stop()
        started = time.monotonic()
        ids = [r.accepted(f"960{n}") for n in range(3)]
        assert time.monotonic() - started < 10, "accepting with Redis down was slow"
        status, _, body = r.stack.request("GET", "/health")
        assert (status, body["redis"], body["database"]) == (503, "unreachable", "connected")
        status, _, body = r.stack.request("GET", "/api/v1/ready")
        assert (status, body.get("broker")) == (503, "unreachable")
        # The web process's pusher thread found Redis down and left the rows to the sweep.
        r.wait(
            lambda: Enhancement.objects.filter(pk__in=ids, enqueued_at__isnull=True).count() == 3,
            10,
            "the rows marked for the sweep",
        )
        time.sleep(2)
        private_redis.start()
        # The scheduled sweep (no restart, no help) enqueues the rows the broker never got.
        rows = r.wait_finished(ids, timeout=75)
        for row in rows.values():
            r.assert_one_note(row)
        assert all(w.poll() is None for w in r.workers)

        # Once connected, webhooks reuse the processes' Redis connections: a connection per enqueue would leave
        # one TIME_WAIT socket per webhook behind and run out of ports at a few hundred webhooks per second.
        stats = redis.Redis.from_url(private_redis.url)
        before = stats.info("stats")["total_connections_received"]
        more = [r.accepted(f"961{n}") for n in range(20)]
        opened = stats.info("stats")["total_connections_received"] - before
        stats.close()
        # A few are (re)connections of the processes' pools after the restart; one per webhook is the bug.
        assert opened < 10, f"{opened} new Redis connections for 20 webhooks"
        r.wait_finished(more, timeout=30)


@needs_redis
def test_redis_lost_during_processing_loses_no_enhancement(tmp_path, sdp, private_redis):
    with FakeOpenAI(latency=2.0) as llm:
        llm_env = {
            "LLM_PROVIDER": "openai",
            "OPENAI_API_KEY": llm.api_key,
            "OPENAI_BASE_URL": llm.url,
            "OPENAI_MODEL": "fake-model",
            "LLM_TIMEOUT": "10",
        }
        with rig(tmp_path, sdp, broker_url=private_redis.url, sweeper=True, Q_WORKERS="2", **llm_env) as r:
            ids = [r.accepted(f"970{n}") for n in range(6)]
            r.wait(lambda: len(llm.requests_log) >= 2, 20, "tasks running")
            # A restart without persistence: the queued tasks are gone while two are mid-flight.
            private_redis.stop()
            time.sleep(1)
            private_redis.start()
            rows = r.wait_finished(ids, timeout=60)
            for row in rows.values():
                r.assert_one_note(row)
            assert len(llm.requests_log) == len(ids), "an enhancement was generated twice"
