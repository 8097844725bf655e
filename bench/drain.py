"""Drain: 1,000 webhooks at once, an LLM that answers after a fixed delay; time until every note is in SDP.

    .venv/bin/python -m bench.drain --processes 1 --workers 2 --threads 16 --latency 5   # one pod: 2 x 16

The ideal is webhooks x latency / (processes x workers x threads): each Django-Q worker process runs up to
ENHANCEMENT_THREADS enhancements at once (enhancements/runner.py); `--threads 1` is the one-task-per-process
shape of before. Every 5 s the queue depth (rows `queued`), the worker-side CPU (cores, and percent of the
production worker pod's CPU request per qcluster, the figure the CPU HPA compares with its target) and the
database connections of the drain database are sampled.

The web server is gunicorn with deploy/gunicorn.conf.py; the workers are `manage.py qcluster`; PostgreSQL
and Redis are real; the OpenAI-compatible API and ServiceDesk Plus are the loopback fakes (tests/fakes), served
from this process. A warm-up batch of one task per worker runs first (each worker process imports the openai
package on its first task); its time is reported apart. Afterwards every ticket must have exactly one note and
the LLM must have been asked exactly once per enhancement. Worker memory is sampled during the drain: RSS per
process and PSS (RSS with shared pages divided among the processes that share them, the fair figure for forks).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.webhook import (
    BASE_DIR,
    FIXTURE,
    cluster_cpu_seconds,
    free_port,
    group_pids,
    recreate_database,
    wait_ready,
)

SLUG = "bench"


def prepare(database_url: str, redis_url: str, sdp_url: str, sdp_key: str) -> str:
    """Migrate the drain database and create a tenant whose SDP is the fake; return the webhook secret."""
    os.environ.update(
        {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "SDP_ALLOW_INSECURE_URLS": "1", "LOG_LEVEL": "WARNING"}
    )
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    from django.core.management import call_command

    from tickets.models import Tenant
    from tickets.services import tenant_create_or_update

    call_command("migrate", verbosity=0)
    # Identical synthetic tickets would form one outage cluster (and follow-up notes): the drain measures the
    # note path, so clustering is kept out of reach here (bench/clusters.py measures it).
    result = tenant_create_or_update(
        slug=SLUG, name="Bench", sdp_base_url=sdp_url, sdp_api_key=sdp_key, cluster_threshold=1000
    )
    Tenant.objects.filter(slug=SLUG).update(rate_limit_per_minute=1_000_000_000)
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    return result.secret


def memory_kib(pid: int) -> tuple[int, int]:
    """Return (RSS, PSS) of a process in KiB."""
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
        pss = next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
    except (OSError, StopIteration):
        return 0, 0
    return rss, pss


def send(url: str, secret: str, sdp_ids: list[str], concurrency: int) -> list[int]:
    """POST a signed request_created webhook per id, concurrently; return the status codes."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    template = json.loads(FIXTURE.read_text())

    def one(sdp_id: str) -> int:
        payload = {**template, "request": {**template["request"], "id": sdp_id}}
        body = json.dumps(payload).encode()
        msg_id, timestamp = f"msg_{sdp_id}", str(int(time.time()))
        digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
        headers = {
            "Content-Type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": timestamp,
            "webhook-signature": f"v1,{base64.b64encode(digest).decode()}",
        }
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, sdp_ids))


def sample_load(
    args: argparse.Namespace,
    leaders: list[int],
    t0: float,
    out: list[dict[str, float]],
    stop: threading.Event,
    notes_done: Any,
) -> None:
    """Every 5 s: queued rows, worker CPU (cores and % of the pod request per qcluster), database connections."""
    import psycopg

    name = args.database_url.rsplit("/", 1)[1]
    last_t, last_cpu = time.monotonic(), cluster_cpu_seconds(leaders)
    with psycopg.connect(args.database_url, autocommit=True) as conn:
        while not stop.wait(5.0):
            now, cpu = time.monotonic(), cluster_cpu_seconds(leaders)
            cores = (cpu - last_cpu) / (now - last_t)
            last_t, last_cpu = now, cpu
            queued = conn.execute("SELECT count(*) FROM enhancements_enhancement WHERE status = 'queued'").fetchone()
            db = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,)).fetchone()
            out.append(
                {
                    "t": round(now - t0, 1),
                    "notes": notes_done(),
                    "queued": queued[0] if queued else 0,
                    "worker_cores": round(cores, 3),
                    "cpu_pct_of_request": round(100 * cores / args.processes / args.cpu_request, 1),
                    "db_connections": (db[0] - 1) if db else 0,
                }
            )


def wait_notes(sdp: Any, ids: list[str], timeout: float, samples: list[tuple[float, int]], t0: float) -> float:
    """Wait until every id has a note; return when the last arrived (monotonic)."""
    deadline = time.monotonic() + timeout
    while True:
        done = sum(1 for sdp_id in ids if sdp.notes.get(sdp_id))
        now = time.monotonic()
        if not samples or now - samples[-1][0] - t0 >= 5:
            samples.append((now - t0, done))
        if done == len(ids):
            return now
        if now > deadline:
            raise TimeoutError(f"only {done}/{len(ids)} notes after {timeout:.0f}s")
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> None:
    """Run the drain benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=1, help="qcluster processes")
    parser.add_argument("--workers", type=int, default=8, help="Q_WORKERS per qcluster")
    parser.add_argument("--webhooks", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=4, help="ENHANCEMENT_THREADS per worker process")
    parser.add_argument("--latency", type=float, default=5.0, help="seconds the LLM fake takes per answer")
    parser.add_argument("--cpu-request", type=float, default=0.25, help="worker pod CPU request (cores)")
    parser.add_argument("--hpa-target", type=float, default=70.0, help="the CPU HPA's target, percent")
    parser.add_argument("--send-concurrency", type=int, default=32)
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/bench_drain")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(BASE_DIR))
    from tests.fakes.openai import FakeOpenAI
    from tests.fakes.sdp import FakeServiceDesk

    concurrency = args.processes * args.workers * args.threads
    llm = FakeOpenAI(latency=args.latency).start()
    sdp = FakeServiceDesk(auth="authtoken", api_key="bench-sdp-key").start()
    template = json.loads(FIXTURE.read_text())["request"]
    warm_ids = [f"w{n}" for n in range(concurrency)]
    ids = [f"d{n}" for n in range(args.webhooks)]
    for sdp_id in warm_ids + ids:
        sdp.add_request({**template, "id": sdp_id})

    recreate_database(args.database_url)
    secret = prepare(args.database_url, args.redis_url, sdp.url, sdp.api_key)
    tmp = Path(tempfile.mkdtemp(prefix="bench-drain-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "WEB_", "GUNICORN_"))}
    env.update(
        {
            "DATABASE_URL": args.database_url,
            "REDIS_URL": args.redis_url,
            "SDP_ALLOW_INSECURE_URLS": "1",
            "LLM_PROVIDER": "openai",
            "OPENAI_API_KEY": llm.api_key,
            "OPENAI_BASE_URL": llm.url,
            "OPENAI_MODEL": "fake-model",
            "Q_WORKERS": str(args.workers),
            "ENHANCEMENT_THREADS": str(args.threads),
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
        }
    )
    port = free_port()
    web = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py", "project.wsgi:application"],
        cwd=BASE_DIR,
        env={**env, "GUNICORN_BIND": f"127.0.0.1:{port}"},
        stdout=(tmp / "web.log").open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    clusters = [
        subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"],
            cwd=BASE_DIR,
            env=env,
            stdout=(tmp / f"worker{n}.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for n in range(args.processes)
    ]
    url = f"http://127.0.0.1:{port}/webhook/servicedesk/{SLUG}/"
    memory: dict[int, tuple[int, int]] = {}
    pss_totals: list[int] = []
    stop_sampling = threading.Event()

    def sample_memory() -> None:
        while not stop_sampling.wait(1.0):
            total = 0
            for cluster in clusters:
                for pid in group_pids(cluster.pid):
                    rss, pss = memory_kib(pid)
                    total += pss
                    old = memory.get(pid, (0, 0))
                    memory[pid] = (max(old[0], rss), max(old[1], pss))
            pss_totals.append(total)

    try:
        wait_ready(port, web)
        deadline = time.monotonic() + 60
        while not all("running." in (tmp / f"worker{n}.log").read_text() for n in range(args.processes)):
            if time.monotonic() > deadline:
                raise TimeoutError("qcluster did not start")
            time.sleep(0.2)

        warm_start = time.monotonic()
        assert set(send(url, secret, warm_ids, args.send_concurrency)) == {202}
        wait_notes(sdp, warm_ids, 120, [], warm_start)
        warm_seconds = time.monotonic() - warm_start
        llm_before = len(llm.requests_log)
        leaders = [cluster.pid for cluster in clusters]
        cpu_before = cluster_cpu_seconds(leaders), cluster_cpu_seconds([web.pid])

        threading.Thread(target=sample_memory, daemon=True).start()
        samples: list[tuple[float, int]] = []
        t0 = time.monotonic()
        load: list[dict[str, float]] = []
        threading.Thread(
            target=sample_load,
            args=(args, leaders, t0, load, stop_sampling, lambda: sum(1 for i in ids if sdp.notes.get(i))),
            daemon=True,
        ).start()
        statuses = send(url, secret, ids, args.send_concurrency)
        sent = time.monotonic() - t0
        last = wait_notes(sdp, ids, 60 + 3 * args.webhooks * args.latency / concurrency, samples, t0)
        elapsed = last - t0
        stop_sampling.set()
        cpu_after = cluster_cpu_seconds(leaders), cluster_cpu_seconds([web.pid])
        time.sleep(1.0)  # a late duplicate would show up now

        from enhancements.models import Enhancement

        notes = [len(sdp.notes.get(sdp_id, [])) for sdp_id in ids]
        posted = Enhancement.objects.filter(ticket__sdp_id__in=ids, status=Enhancement.Status.POSTED).count()
        ideal = args.webhooks * args.latency / concurrency
        result = {
            "processes": args.processes,
            "workers_per_process": args.workers,
            "concurrency": concurrency,
            "webhooks": args.webhooks,
            "accepted_202": statuses.count(202),
            "send_seconds": round(sent, 2),
            "drain_seconds": round(elapsed, 2),
            "ideal_seconds": round(ideal, 2),
            "ratio_to_ideal": round(elapsed / ideal, 3),
            "notes_missing": notes.count(0),
            "tickets_with_duplicate_notes": sum(1 for n in notes if n > 1),
            "rows_posted": posted,
            "llm_calls": len(llm.requests_log) - llm_before,
            "warmup_seconds": round(warm_seconds, 2),
            "worker_cpu_seconds": round(cpu_after[0] - cpu_before[0], 1),
            "web_cpu_seconds": round(cpu_after[1] - cpu_before[1], 1),
            "worker_rss_mib": {str(pid): round(rss / 1024, 1) for pid, (rss, _) in sorted(memory.items())},
            # The largest sum at one moment (recycled workers are replaced, not added).
            "worker_pss_total_mib": round(max(pss_totals, default=0) / 1024, 1),
            "progress": [(round(t, 1), n) for t, n in samples],
            "threads_per_process": args.threads,
            "load_samples": load,
            "worker_cpu_percent_of_request_max": max((x["cpu_pct_of_request"] for x in load), default=0),
            "queue_depth_max": max((x["queued"] for x in load), default=0),
            "db_connections_max": max((x["db_connections"] for x in load), default=0),
            "loadavg_end": os.getloadavg(),
        }
    finally:
        stop_sampling.set()
        for cluster in clusters:
            if cluster.poll() is None:
                cluster.terminate()  # the main process only: it stops its workers itself
        for cluster in clusters:
            try:
                cluster.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(cluster.pid, 9)
        if web.poll() is None:
            os.killpg(web.pid, 15)
            web.wait(timeout=30)
        llm.stop()
        sdp.stop()
    rss = list(result["worker_rss_mib"].values())
    print(json.dumps({k: v for k, v in result.items() if k != "worker_rss_mib"}, indent=None))
    print(
        f"\n{args.processes} qcluster x Q_WORKERS={args.workers} x ENHANCEMENT_THREADS={args.threads} = "
        f"{concurrency} concurrent tasks: "
        f"{args.webhooks} notes in {elapsed:.1f}s (ideal {ideal:.1f}s, {elapsed / ideal:.2f}x); "
        f"missing {result['notes_missing']}, duplicated {result['tickets_with_duplicate_notes']}, "
        f"LLM calls {result['llm_calls']}; worker CPU {result['worker_cpu_seconds']}s, web CPU "
        f"{result['web_cpu_seconds']}s; {len(rss)} worker-side processes, RSS {min(rss):.0f}-{max(rss):.0f} MiB each, "
        f"PSS total {result['worker_pss_total_mib']} MiB; logs in {tmp}"
    )
    print(
        f"while the queue peaked at {result['queue_depth_max']} rows, worker CPU peaked at "
        f"{result['worker_cpu_percent_of_request_max']}% of a {args.cpu_request} core request per qcluster "
        f"(CPU HPA target {args.hpa_target}%); database connections at most {result['db_connections_max']}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
