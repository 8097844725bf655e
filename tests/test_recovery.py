"""A worker killed mid-task: the heartbeat tells it from a slow LLM call, and the sweep recovers it in seconds.

Real gunicorn, two real qcluster processes, the SDP and OpenAI fakes (tests/test_faults.py's rig). The heartbeat
settings are scaled down (beat every second, dead after 4 s) so the test takes seconds; bench/recovery.py runs the
same scenario with the production defaults and reports the time to the note.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from enhancements.models import Enhancement
from tests.fakes.openai import FakeOpenAI
from tests.processes import stop
from tests.test_faults import broker_url, rig  # noqa: F401 - broker_url is a fixture

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]

# The old rule (a running row older than ENHANCEMENT_STUCK_AFTER) would wait 10 minutes: only the heartbeat
# can recover the row within this test.
BEAT = {
    "ENHANCEMENT_HEARTBEAT_SECONDS": "1",
    "ENHANCEMENT_DEAD_AFTER": "4",
    "ENHANCEMENT_SWEEP_SECONDS": "1",
    "ENHANCEMENT_STUCK_AFTER": "600",
    "Q_TIMEOUT": "300",
}


def _llm_env(llm: FakeOpenAI) -> dict[str, str]:
    return {
        "LLM_PROVIDER": "openai",
        "OPENAI_API_KEY": llm.api_key,
        "OPENAI_BASE_URL": llm.url,
        "OPENAI_MODEL": "fake-model",
        "LLM_TIMEOUT": "40",
    }


def test_worker_killed_mid_llm_call_is_recovered_by_the_heartbeat_and_a_slow_call_is_not(tmp_path, sdp, broker_url):  # noqa: F811
    with FakeOpenAI() as llm:
        env = {**BEAT, **_llm_env(llm), "Q_WORKERS": "1", "ENHANCEMENT_THREADS": "2"}
        with rig(tmp_path, sdp, broker_url=broker_url, workers=2, **env) as r:
            # An LLM call twice as long as DEAD_AFTER on a live worker: its beats keep it; one call, one attempt.
            llm.fail_next(1, "timeout", delay=8)
            slow = r.accepted("9801")
            row = r.wait_finished([slow], timeout=60)[slow]
            r.assert_one_note(row)
            assert row.attempts == 1 and len(llm.requests_log) == 1, (row.attempts, len(llm.requests_log))
            assert row.provider == "openai", row.error

            # Now the worker running a call dies (SIGKILL to its whole cluster, as a node failure would).
            llm.fail_next(1, "timeout", delay=30)
            pk = r.accepted("9802")
            r.wait(lambda: len(llm.requests_log) == 2, 30, "the second LLM call in flight")
            row = Enhancement.objects.get(pk=pk)
            assert row.status == Enhancement.Status.RUNNING and row.heartbeat_at is not None
            owner_pid = int(row.worker.rsplit(":", 1)[1])
            victim = next(w for w in r.workers if os.getpgid(owner_pid) == w.pid)
            stop(victim, signal.SIGKILL, timeout=10)  # the worker and its children, as the OOM killer would
            killed_at = time.monotonic()

            row = r.wait_finished([pk], timeout=90)[pk]
            r.assert_one_note(row)
            seconds = r.note_posts("9802")[0] - killed_at
            print(f"worker killed mid-LLM-call: note posted {seconds:.1f}s later by {row.worker}")
            assert row.attempts == 2 and row.worker != f"{row.worker.rsplit(':', 1)[0]}:{owner_pid}"
            assert row.provider == "openai", row.error
            assert len(llm.requests_log) == 3
