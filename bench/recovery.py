"""Recovery: kill the worker running an enhancement (SIGKILL to its qcluster, mid-LLM-call); time until its note.

    .venv/bin/python -m bench.recovery --rounds 3

The production defaults apply (ENHANCEMENT_HEARTBEAT_SECONDS=10, ENHANCEMENT_DEAD_AFTER=45,
ENHANCEMENT_SWEEP_SECONDS=15, ENHANCEMENT_STUCK_AFTER=420), so the figure is what a deployment gets. gunicorn
(deploy/gunicorn.conf.py) and `--clusters` qcluster processes run against a fresh PostgreSQL database and Redis;
the OpenAI-compatible API and SDP are the loopback fakes. Each round sends one webhook whose LLM call takes
`--llm-seconds` (longer than DEAD_AFTER, so a live slow call would be mistaken for a dead one if the design did
that), kills the cluster that runs it, starts a replacement cluster (as Kubernetes restarts the pod) and
measures from the kill to the note's arrival in SDP. Before the kills, a first webhook with the same slow call on
a live worker checks that it is posted after one attempt and one LLM call.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.drain import prepare, send
from bench.webhook import BASE_DIR, FIXTURE, free_port, recreate_database, wait_ready


def main(argv: list[str] | None = None) -> None:
    """Run the recovery benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clusters", type=int, default=2, help="qcluster processes (pods) running at once")
    parser.add_argument("--llm-seconds", type=float, default=60.0, help="how long the killed LLM call takes")
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/bench_recovery")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/7")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(BASE_DIR))
    from tests.fakes.openai import FakeOpenAI
    from tests.fakes.sdp import FakeServiceDesk

    llm = FakeOpenAI().start()
    sdp = FakeServiceDesk(auth="authtoken", api_key="bench-sdp-key").start()
    template = json.loads(FIXTURE.read_text())["request"]
    ids = ["live"] + [f"kill{n}" for n in range(args.rounds)]
    for sdp_id in ids:
        sdp.add_request({**template, "id": sdp_id})
    recreate_database(args.database_url)
    secret = prepare(args.database_url, args.redis_url, sdp.url, sdp.api_key)
    from enhancements.models import Enhancement

    tmp = Path(tempfile.mkdtemp(prefix="bench-recovery-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "WEB_", "GUNICORN_", "ENHANCEMENT_"))}
    env.update(
        {
            "DATABASE_URL": args.database_url,
            "REDIS_URL": args.redis_url,
            "SDP_ALLOW_INSECURE_URLS": "1",
            "LLM_PROVIDER": "openai",
            "OPENAI_API_KEY": llm.api_key,
            "OPENAI_BASE_URL": llm.url,
            "OPENAI_MODEL": "fake-model",
            "LLM_TIMEOUT": str(args.llm_seconds + 30),
            "LOG_LEVEL": "INFO",
        }
    )
    started: list[subprocess.Popen[bytes]] = []

    def cluster() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"],
            cwd=BASE_DIR,
            env=env,
            stdout=(tmp / f"worker{len(started)}.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        started.append(proc)
        return proc

    port = free_port()
    web = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py", "project.wsgi:application"],
        cwd=BASE_DIR,
        env={**env, "GUNICORN_BIND": f"127.0.0.1:{port}"},
        stdout=(tmp / "web.log").open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/webhook/servicedesk/bench/"
    live = [cluster() for _ in range(args.clusters)]
    results: list[dict[str, float | str]] = []

    def wait(predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while not (value := predicate()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} after {timeout:.0f}s (logs in {tmp})")
            time.sleep(0.1)
        return value

    def note_at(sdp_id: str) -> float | None:
        path = f"/api/v3/requests/{sdp_id}/notes"
        posts = [r.received_at for r in sdp.requests_log if r.method == "POST" and r.path == path]
        return posts[0] if posts else None

    try:
        wait_ready(port, web)
        time.sleep(8)  # the clusters boot meanwhile
        llm.fail_next(1, "timeout", delay=args.llm_seconds)
        assert send(url, secret, ["live"], 1) == [202]
        wait(lambda: note_at("live"), args.llm_seconds + 120, "the live slow call's note")
        row = Enhancement.objects.get(ticket__sdp_id="live")
        live_ok = row.attempts == 1 and len(llm.requests_log) == 1 and row.provider == "openai"
        calls = len(llm.requests_log)
        print(f"live worker, {args.llm_seconds:.0f}s LLM call: attempts {row.attempts}, LLM calls {calls}")
        for sdp_id in ids[1:]:
            calls = len(llm.requests_log)
            llm.fail_next(1, "timeout", delay=args.llm_seconds)
            assert send(url, secret, [sdp_id], 1) == [202]
            wait(lambda c=calls: len(llm.requests_log) > c, 60, "the LLM call in flight")
            row = Enhancement.objects.get(ticket__sdp_id=sdp_id)
            owner = int(row.worker.rsplit(":", 1)[1])
            victim = next(p for p in live if os.getpgid(owner) == p.pid)
            os.killpg(victim.pid, signal.SIGKILL)
            killed = time.monotonic()
            victim.wait(timeout=10)
            live.remove(victim)
            live.append(cluster())  # the pod restarts
            posted = wait(lambda s=sdp_id: note_at(s), 600, f"the note of {sdp_id}")
            row = Enhancement.objects.get(ticket__sdp_id=sdp_id)
            notes = len(sdp.notes.get(sdp_id, []))
            took = round(posted - killed, 1)
            results.append({"ticket": sdp_id, "seconds_to_note": took, "attempts": row.attempts, "notes": notes})
            print(f"{sdp_id}: killed mid-LLM-call, note {took}s later (attempts {row.attempts}, notes {notes})")
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.terminate()
        for proc in started:
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        os.killpg(web.pid, signal.SIGTERM)
        web.wait(timeout=30)
        llm.stop()
        sdp.stop()
    seconds = [float(r["seconds_to_note"]) for r in results]
    summary = {
        "rounds": results,
        "live_slow_call_once": live_ok,
        "max_seconds_to_note": max(seconds),
        "loadavg_end": os.getloadavg(),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
