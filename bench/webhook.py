"""Webhook load: answers/s and p50/p99 latency of the real webhook against the floor, in the same run.

    .venv/bin/python -m bench.webhook                      # 16 and 64 connections, production gunicorn settings
    .venv/bin/python -m bench.webhook --web-concurrency 3 --threads 2 --connections 16

Both servers are `gunicorn -c deploy/gunicorn.conf.py project.wsgi:application` with the same environment; the
floor only swaps DJANGO_SETTINGS_MODULE for bench.floor.settings (one bare view: verify the HMAC, commit one row).
They run against a fresh PostgreSQL database and Redis (the app's cache, rate limit and broker; no worker runs, so
tasks pile up in Redis and are flushed at the end). The load generator is wrk with a Lua script that sends
pre-signed requests, each a distinct ticket id and webhook-id, so every answer is a real insert (202). wrk runs
on the same two cores as the servers and PostgreSQL: the figures are for the whole machine, not the server alone.
After the runs the rows are counted: every 202 must be a committed row.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
FIXTURE = BASE_DIR / "tests" / "fixtures" / "servicedesk" / "webhook__request_created.json"
SLUG = "bench"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# wrk sends pre-built, pre-signed requests: it has no HMAC of its own. Each thread takes every n-th line.
WRK_SCRIPT = r"""
local counter = 0
local threads = {}
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end
function init(args)
  local path, nthreads = args[1], tonumber(args[2])
  reqs = {}
  statuses = {}
  wrapped = 0
  local i = 0
  for line in io.lines(path) do
    if i % nthreads == tid then
      local id, ts, sig, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
      reqs[#reqs + 1] = wrk.format("POST", nil, {
        ["Content-Type"] = "application/json",
        ["webhook-id"] = id, ["webhook-timestamp"] = ts, ["webhook-signature"] = sig,
      }, body)
    end
    i = i + 1
  end
  n = 0
end
function request()
  n = n + 1
  if n > #reqs then
    n = 1
    wrapped = wrapped + 1
  end
  return reqs[n]
end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
function done(summary, latency, requests)
  local total, wraps = {}, 0
  for _, t in ipairs(threads) do
    for status, count in pairs(t:get("statuses")) do
      total[tostring(status)] = (total[tostring(status)] or 0) + count
    end
    wraps = wraps + t:get("wrapped")
  end
  local parts = {}
  for status, count in pairs(total) do parts[#parts + 1] = string.format('"%s": %d', status, count) end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"statuses": {%s}, "wrapped": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout,
    table.concat(parts, ", "), wraps))
end
"""


@dataclass
class Result:
    """One wrk run against one server."""

    target: str
    connections: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    statuses: dict[str, int]
    loadavg_before: float
    cpu_ms_per_request: float  # the server's processes (gunicorn master and workers), user + system
    db_cpu_ms_per_request: float  # PostgreSQL's backends of the bench database (only this server loads it now)


def group_pids(leader: int) -> list[int]:
    """Return the pids of a process group (the qcluster started with start_new_session)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == leader:  # field 5 of stat, pgrp
            pids.append(int(entry.name))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """Return user + system CPU seconds used so far by the processes and their reaped children."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # utime, stime, cutime, cstime: Django-Q recycles a worker process after 500 tasks, and the sentinel
        # that reaps it inherits its CPU time, so a cluster's total stays whole across recycling.
        total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / CLOCK_TICKS


def cluster_cpu_seconds(leaders: list[int]) -> float:
    """Return the CPU seconds of every process in the given process groups, as they are now."""
    return cpu_seconds([pid for leader in leaders for pid in group_pids(leader)])


def ensure_tool(tool: str, *, needed_by: str, how: str) -> None:
    """Make sure tool (a Debian package of the same name) is on PATH: install it when running as root with apt-get,
    else exit saying how (how: the install hints)."""
    if shutil.which(tool):
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"{tool} is missing: apt-get install -y {tool}", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-q", tool], check=False)
        if shutil.which(tool):
            return
    raise SystemExit(f"{needed_by} needs {tool}: {how}")


def ensure_wrk() -> None:
    """Make sure wrk is on PATH (installed with apt-get when root), else say how."""
    ensure_tool(
        "wrk",
        needed_by="bench.webhook",
        how="(https://github.com/wg/wrk) `sudo apt-get install -y wrk` on Debian/Ubuntu (after `apt-get update` if "
        "the package is not found), `brew install wrk` on macOS.",
    )


def database_cpu_seconds(database_url: str) -> dict[int, float]:
    """Return the CPU seconds used so far by each PostgreSQL backend connected to the database in database_url.

    Needs the server on this machine and /proc readable (root, or the postgres user)."""
    import psycopg

    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(database_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", [name]
        ).fetchall()
    return {pid: cpu_seconds([pid]) for (pid,) in rows}


def database_cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    """Return the CPU the backends used between two samples (a backend that exited in between is not counted)."""
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def free_port() -> int:
    """Return a free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def recreate_database(url: str) -> None:
    """Drop and create the PostgreSQL database named in url."""
    import psycopg

    name = url.rsplit("/", 1)[1]
    admin = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def prepare(database_url: str, redis_url: str) -> str:
    """Migrate the bench database, create the bench tenant and the floor table; return the webhook secret."""
    os.environ["DATABASE_URL"] = database_url
    os.environ["REDIS_URL"] = redis_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from bench.floor.views import TABLE
    from tickets.models import Tenant
    from tickets.services import tenant_create_or_update

    call_command("migrate", verbosity=0)
    result = tenant_create_or_update(slug=SLUG, name="Bench")
    # The per-tenant limit (600/min by default) would answer 429; the Redis counter still runs per request.
    Tenant.objects.filter(slug=SLUG).update(rate_limit_per_minute=1_000_000_000)
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigserial PRIMARY KEY, webhook_id text NOT NULL, "
            "body jsonb NOT NULL, received_at timestamptz NOT NULL DEFAULT now())"
        )
    connection.close()
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    return result.secret


def start_server(name: str, settings_module: str, port: int, env: dict[str, str], logdir: Path) -> subprocess.Popen:
    """Start gunicorn with the production config file."""
    child_env = {**env, "DJANGO_SETTINGS_MODULE": settings_module, "GUNICORN_BIND": f"127.0.0.1:{port}"}
    metrics_dir = logdir / f"prom-{name}"
    metrics_dir.mkdir(exist_ok=True)
    child_env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    command = [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py", "project.wsgi:application"]
    return subprocess.Popen(
        command,
        cwd=BASE_DIR,
        env=child_env,
        stdout=(logdir / f"{name}.log").open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Wait until the server answers the webhook path (any HTTP status)."""
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{port}/webhook/servicedesk/{SLUG}/"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on {port} exited with {proc.returncode}")
        try:
            request = urllib.request.Request(url, data=b"{}", headers={"Content-Type": "application/json"})
            urllib.request.urlopen(request, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"server on {port} did not answer")


def write_requests(path: Path, secret: str, count: int, tag: str) -> None:
    """Write count pre-signed requests (distinct ticket and webhook ids), one per line."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    template = json.loads(FIXTURE.read_text())
    timestamp = str(int(time.time()))
    with path.open("w") as out:
        for number in range(count):
            template["request"]["id"] = f"{tag}x{number}"
            body = json.dumps(template, separators=(",", ":"))
            msg_id = f"msg_{tag}_{number}"
            digest = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
            out.write(f"{msg_id}\t{timestamp}\tv1,{base64.b64encode(digest).decode()}\t{body}\n")


def run_wrk(
    target: str,
    port: int,
    connections: int,
    seconds: int,
    threads: int,
    secret: str,
    tmp: Path,
    tag: str,
    rate: int,
    server_pid: int,
    database_url: str,
) -> Result:
    """Run wrk once and return its figures, with the CPU the server's process group used per request."""
    requests_file = tmp / f"requests-{tag}.tsv"
    write_requests(requests_file, secret, rate * (seconds + 2), tag)
    script = tmp / "webhook.lua"
    script.write_text(WRK_SCRIPT)
    loadavg = os.getloadavg()[0]
    command = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script),
        f"http://127.0.0.1:{port}/webhook/servicedesk/{SLUG}/", "--", str(requests_file), str(threads),
    ]  # fmt: skip
    cpu_before, db_before = cluster_cpu_seconds([server_pid]), database_cpu_seconds(database_url)
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    cpu = cluster_cpu_seconds([server_pid]) - cpu_before
    db_cpu = database_cpu_delta(db_before, database_cpu_seconds(database_url))
    requests_file.unlink()
    data = json.loads(next(line for line in output.splitlines() if line.startswith("WRKJSON ")).split(" ", 1)[1])
    if data["wrapped"]:
        raise RuntimeError(f"wrk ran out of distinct requests ({data['wrapped']} wraps): raise --max-rate")
    duration = data["duration_us"] / 1e6
    return Result(
        target=target,
        connections=connections,
        requests=data["requests"],
        seconds=round(duration, 2),
        rps=round(data["requests"] / duration, 1),
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        errors=sum(data["errors"].values()),
        statuses=data["statuses"],
        loadavg_before=round(loadavg, 2),
        cpu_ms_per_request=round(cpu * 1000 / max(data["requests"], 1), 2),
        db_cpu_ms_per_request=round(db_cpu * 1000 / max(data["requests"], 1), 2),
    )


def count_rows() -> dict[str, int]:
    """Return the committed rows of each server."""
    from django.db import connection

    from bench.floor.views import TABLE
    from enhancements.models import Enhancement

    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {TABLE}")  # noqa: S608 - a constant table name
        floor = cursor.fetchone()[0]
    return {"floor": floor, "app": Enhancement.objects.count()}


def _wsgi_post(app: Callable[..., Any], path: str, body: str, headers: dict[str, str]) -> int:
    """Return the status of one POST through a WSGI application, as gunicorn would call it."""
    import io

    raw = body.encode()
    environ = {
        "REQUEST_METHOD": "POST", "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "127.0.0.1",
        "REMOTE_ADDR": "127.0.0.1", "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(raw)),
        "wsgi.input": io.BytesIO(raw), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
        "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False, **headers,
    }  # fmt: skip
    status: list[str] = []
    result = app(environ, lambda line, _headers, _exc=None: status.append(line))
    b"".join(result)
    getattr(result, "close", lambda: None)()
    return int(status[0].split()[0])


def in_process(secret: str, count: int, profile: int = 0) -> None:
    """Time count webhooks one after another inside this process, app (project.wsgi, the slim chain gunicorn
    serves) and floor view; print them, and with profile > 0 the top functions of a cProfile of the app."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import override_settings

    from bench.floor import views as floor_views

    # The floor module was imported before the secret existed.
    floor_views._KEY = base64.b64decode(secret.removeprefix("whsec_"))
    key = floor_views._KEY
    template = json.loads(FIXTURE.read_text())
    with override_settings(ROOT_URLCONF="bench.floor.urls", MIDDLEWARE=[]):
        floor_client = Client(HTTP_HOST="127.0.0.1")  # the floor's handler: no middleware, one URL
    path = f"/webhook/servicedesk/{SLUG}/"

    def signed(tag: str, number: int) -> tuple[str, dict[str, str]]:
        template["request"]["id"] = f"{tag}x{number}"
        body = json.dumps(template)
        msg_id, timestamp = f"msg_{tag}_{number}", str(int(time.time()))
        digest = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
        headers = {"HTTP_WEBHOOK_ID": msg_id, "HTTP_WEBHOOK_TIMESTAMP": timestamp}
        return body, {**headers, "HTTP_WEBHOOK_SIGNATURE": f"v1,{base64.b64encode(digest).decode()}"}

    from project.wsgi import application

    def app(number: int) -> int:
        body, headers = signed("ipa", number)
        return _wsgi_post(application, path, body, headers)

    def floor(number: int) -> int:
        body, headers = signed("ipf", number)
        with override_settings(ROOT_URLCONF="bench.floor.urls", MIDDLEWARE=[]):
            return floor_client.generic("POST", path, body, content_type="application/json", **headers).status_code

    statements: list[str] = []

    def record(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        statements.append(sql)
        return execute(sql, params, many, context)

    for name, call in (("floor", floor), ("app", app)):
        for number in range(30):  # warm-up: imports, connections, caches
            assert call(number) == 202
        statements.clear()
        with connection.execute_wrapper(record):
            assert call(10**6) == 202
        cpu, wall = time.process_time(), time.perf_counter()
        for number in range(30, 30 + count):
            assert call(number) == 202
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        print(
            f"{name}: {cpu / count * 1000:.1f} ms CPU and {wall / count * 1000:.1f} ms wall per webhook, "
            f"{len(statements)} SQL statements besides BEGIN/COMMIT: {[sql[:24] for sql in statements]}"
        )
    if profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile(time.process_time)  # CPU, not waits for PostgreSQL or Redis
        profiler.enable()
        for number in range(10**7, 10**7 + count):
            assert app(number) == 202
        profiler.disable()
        stats = pstats.Stats(profiler)
        by_file: dict[str, float] = {}
        for (filename, _line, _name), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
            package = filename.split("site-packages/")[-1].split("/")[0] if "site-packages" in filename else filename
            package = package.replace(str(BASE_DIR) + "/", "")
            by_file[package] = by_file.get(package, 0.0) + tottime
        total = sum(by_file.values())
        print(f"\napp under cProfile (CPU), {count} webhooks: own time by package or project file")
        for name, seconds in sorted(by_file.items(), key=lambda item: -item[1])[:profile]:
            print(f"{seconds / total:6.1%}  {name}")
        stats.strip_dirs()
        for order in ("cumulative", "tottime"):
            print(f"\napp under cProfile, {count} webhooks, by {order}:")
            stats.sort_stats(order).print_stats(profile)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print a table (and JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/bench_webhook")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--connections", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--duration", type=int, default=15, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of unmeasured load before each run")
    parser.add_argument("--rounds", type=int, default=1, help="repeat floor/app pairs to see the spread")
    parser.add_argument("--targets", nargs="+", default=["floor", "app"], choices=["floor", "app"])
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--max-rate", type=int, default=4000, help="requests/s to pre-sign for (no reuse)")
    parser.add_argument("--web-concurrency", help="WEB_CONCURRENCY (default: the config's)")
    parser.add_argument("--threads", help="GUNICORN_THREADS (default: the config's)")
    parser.add_argument("--max-requests", help="GUNICORN_MAX_REQUESTS (default: the config's)")
    parser.add_argument("--conn-max-age", help="CONN_MAX_AGE (default: the settings')")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--in-process", type=int, metavar="N", help="instead: time N webhooks in this process")
    parser.add_argument("--profile", type=int, default=0, metavar="K", help="with --in-process: cProfile, top K")
    args = parser.parse_args(argv)
    if args.in_process:
        recreate_database(args.database_url)
        in_process(prepare(args.database_url, args.redis_url), args.in_process, args.profile)
        return
    ensure_wrk()

    recreate_database(args.database_url)
    secret = prepare(args.database_url, args.redis_url)
    tmp = Path(tempfile.mkdtemp(prefix="bench-webhook-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "WEB_", "GUNICORN_"))}
    env.update(
        {
            "DATABASE_URL": args.database_url,
            "REDIS_URL": args.redis_url,
            "BENCH_WEBHOOK_SECRET": secret,
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
        }
    )
    for option, name in (
        (args.web_concurrency, "WEB_CONCURRENCY"),
        (args.threads, "GUNICORN_THREADS"),
        (args.max_requests, "GUNICORN_MAX_REQUESTS"),
        (args.conn_max_age, "CONN_MAX_AGE"),
    ):
        if option is not None:
            env[name] = str(option)
    ports = {"floor": free_port(), "app": free_port()}
    settings_modules = {"floor": "bench.floor.settings", "app": "project.settings"}
    servers = {t: start_server(t, settings_modules[t], ports[t], env, tmp) for t in args.targets}
    results: list[Result] = []
    warmups: list[Result] = []
    try:
        for target, proc in servers.items():
            wait_ready(ports[target], proc)
        for round_number in range(args.rounds):
            for connections in args.connections:
                # Alternate which server goes first, so a load that rises or falls during the run favours neither.
                order = (
                    args.targets
                    if (round_number + args.connections.index(connections)) % 2 == 0
                    else args.targets[::-1]
                )
                for target in order:
                    proc = servers[target]
                    tag = f"r{round_number}c{connections}{target[0]}"
                    if args.warmup:
                        warmups.append(run_wrk(target, ports[target], connections, args.warmup, args.wrk_threads,
                                               secret, tmp, f"{tag}w", args.max_rate, proc.pid,
                                               args.database_url))  # fmt: skip
                    result = run_wrk(
                        target, ports[target], connections, args.duration, args.wrk_threads, secret, tmp, tag,
                        args.max_rate, proc.pid, args.database_url,
                    )  # fmt: skip
                    results.append(result)
                    print(json.dumps(asdict(result)), flush=True)
        rows = count_rows()
    finally:
        for proc in servers.values():
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
                proc.wait(timeout=30)
        import redis

        redis.Redis.from_url(args.redis_url).flushdb()

    answered = {t: sum(r.statuses.get("202", 0) for r in results + warmups if r.target == t) for t in args.targets}
    knobs = ("WEB_CONCURRENCY", "GUNICORN_THREADS", "CONN_MAX_AGE", "GUNICORN_MAX_REQUESTS")
    print("\nweb: " + " ".join(f"{k}={env.get(k, 'default')}" for k in knobs) + f"; logs in {tmp}")
    print(
        "| target | conns | answers/s | p50 ms | p90 ms | p99 ms | max ms | server CPU ms/answer "
        "| PostgreSQL CPU ms/answer | errors | statuses | load before |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r.target} | {r.connections} | {r.rps:.0f} | {r.p50_ms:.1f} | {r.p90_ms:.1f} | {r.p99_ms:.1f} | "
            f"{r.max_ms:.0f} | {r.cpu_ms_per_request:.2f} | {r.db_cpu_ms_per_request:.2f} | {r.errors} | "
            f"{r.statuses} | {r.loadavg_before} |"
        )
    for connections in args.connections:
        floor_runs = [r for r in results if r.target == "floor" and r.connections == connections]
        app_runs = [r for r in results if r.target == "app" and r.connections == connections]
        if floor_runs and app_runs:
            rps = sum(r.rps for r in app_runs) / sum(r.rps for r in floor_runs)
            p99 = max(r.p99_ms for r in app_runs) / max(max(r.p99_ms for r in floor_runs), 0.001)
            cpu = sum(r.cpu_ms_per_request for r in app_runs) / max(sum(r.cpu_ms_per_request for r in floor_runs), 1e-6)
            db = sum(r.db_cpu_ms_per_request for r in app_runs) / max(
                sum(r.db_cpu_ms_per_request for r in floor_runs), 1e-6
            )
            print(
                f"{connections} connections: app/floor answers/s = {rps:.0%}, p99 app/floor = {p99:.2f}x, "
                f"server CPU per answer app/floor = {cpu:.2f}x, PostgreSQL CPU per answer app/floor = {db:.2f}x"
            )
    # Every 202 must be a committed row (warm-up runs included); anything else is a lost webhook.
    print(f"committed rows {rows}; 202 answers {answered} (warm-ups included)")
    for target in args.targets:
        # wrk stops at its deadline without reading answers in flight: those rows exist without a counted 202.
        in_flight = sum(r.connections for r in results + warmups if r.target == target)
        extra = rows[target] - answered[target]
        verdict = "ok" if 0 <= extra <= in_flight else "MISMATCH"
        print(
            f"{target}: {answered[target]} answered 202, {rows[target]} rows ({extra} answered after wrk stopped, "
            f"at most {in_flight}): {verdict}"
        )
    if args.json:
        args.json.write_text(json.dumps({"env": {k: env.get(k) for k in ("WEB_CONCURRENCY", "GUNICORN_THREADS",
                             "CONN_MAX_AGE", "GUNICORN_MAX_REQUESTS")}, "results": [asdict(r) for r in results],
                             "rows": rows}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
