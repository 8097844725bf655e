"""Instructions per webhook, app against floor, counted by callgrind: a figure the machine's load moves far less.

    .venv/bin/python -m bench.webhook_instructions                       # this checkout, app and floor
    .venv/bin/python -m bench.webhook_instructions --checkout /path/a --checkout /path/b   # A/B in one run

bench/webhook.py's answers/s ratio moves by +-20 % from run to run on a shared two-core VM, so a 10 % change
of the code cannot be seen there. This counts instead the instructions the Python process executes per webhook.
CAVEAT, measured: not fully deterministic. With the pusher stopped after each webhook (an earlier version) the
same code gave 2.62, 2.76 and 2.92 M per webhook in three runs (about +-5 %); with the pusher as below, the spread
of repeat runs has not been measured. A time-dependent cost is left (polling rounds that depend on PostgreSQL's
and Redis's timing): repeat runs and compare medians before trusting a difference of a few per cent.
For each target, a child Python process (`--child app|floor`) sends N webhooks one after another through
`project.wsgi.application` in-process, as gunicorn would call it (the floor: the same with
DJANGO_SETTINGS_MODULE=bench.floor.settings, as bench/webhook.py serves it). Each webhook is a new signed
delivery (a new ticket id and webhook-id) and must answer 202. Each child runs twice under
`valgrind --tool=callgrind`, with --short and --long webhooks; (I_long - I_short) / (long - short) is the
instructions per webhook, so Python's and Django's start-up cancel out. The database is recreated and prepared
(bench/webhook.py's `recreate_database` and `prepare`) once per checkout; LOG_FORMAT=json and LOG_LEVEL=INFO, as
bench/webhook.py sets for its servers; PYTHONHASHSEED=0, so dict and set layouts repeat. The app's pusher thread
(enhancements/services/pushing.py) gathers for an hour instead of 20 ms and is stopped once after the last webhook
(see _app_pusher): every id is packaged as in production, and the pushes no longer depend on valgrind's slow-down:
both runs make their pushes at the stop, so the per-push cost (the RPUSH round trip) cancels out and is not in the
figure; what is counted per webhook is the hand-off to the queue and the id's package. Two time-driven
costs are switched off, as their share per webhook would grow with valgrind's wall time (and under load in
production it is close to nothing): CONN_MAX_AGE is a day, not 60 s, and the tenant cache does not expire.

What it counts: user-space instructions of that one Python process (our code, Django, psycopg, redis-py, the
queue pusher's thread, libpq and libc). What it does not: the kernel (system calls, the network stack),
PostgreSQL's and Redis's own work, gunicorn, and waits. Instructions are not time (cache misses, locks and I/O
cost time without instructions), but they are what changes when the code does, and they do not move with the
machine's load. bench/webhook.py (wrk against gunicorn) stays the benchmark for throughput and latency.

--checkout DIR measures another checkout's code: the children run with cwd=DIR and DIR first on sys.path, so
`project`, `tickets`, `enhancements` and their settings come from DIR, while this harness, bench/webhook.py's
helpers and the floor view come from this checkout (DIR needs no copy of this file). They use this interpreter
(sys.executable), so DIR must work with this virtualenv's packages. Each callgrind run takes one to two minutes
(mostly start-up under valgrind's slow-down), four per checkout (two with --targets app).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import webhook as bench_webhook

SETTINGS = {"app": "project.settings", "floor": "bench.floor.settings"}
COLLECTED = re.compile(r"^==\d+== Collected : (\d+)$", re.MULTILINE)


def ensure_valgrind() -> None:
    """Make sure valgrind is on PATH (installed with apt-get when root), else say how."""
    bench_webhook.ensure_tool(
        "valgrind",
        needed_by="bench.webhook_instructions",
        how="(https://valgrind.org) `sudo apt-get install -y valgrind` on Debian/Ubuntu (after `apt-get update` if "
        "the package is not found), `sudo dnf install valgrind` on Fedora. macOS has no working valgrind: run it in "
        "a Linux container or VM.",
    )


def collected_instructions(valgrind_log: str) -> int:
    """Return the instructions callgrind counted, from its log (the `Collected :` line of the Ir event)."""
    found = COLLECTED.findall(valgrind_log)
    if len(found) != 1:
        raise ValueError(f"expected one 'Collected :' line in callgrind's log, found {len(found)}")
    return int(found[0])


def per_webhook(target: str, checkout: str, short: tuple[int, int], long: tuple[int, int]) -> dict[str, object]:
    """Turn two callgrind totals, (webhooks, instructions) of a short and a long run, into the target's figures."""
    (short_count, short_total), (long_count, long_total) = short, long
    if long_count <= short_count:
        raise ValueError(f"the long run ({long_count} webhooks) must send more than the short one ({short_count})")
    if long_total <= short_total:
        raise ValueError(f"the long run counted {long_total} instructions, not more than the short one's {short_total}")
    extra = long_count - short_count
    return {
        "target": target,
        "checkout": checkout,
        "short": short_count,
        "long": long_count,
        "instructions_short": short_total,
        "instructions_long": long_total,
        "instructions_per_webhook": round((long_total - short_total) / extra),
        "start_up_instructions": round(short_total - (long_total - short_total) / extra * short_count),
    }


def summary(results: list[dict[str, object]]) -> dict[str, object]:
    """Return per checkout the app's and floor's instructions per webhook and app/floor; app/first app for A/B."""
    checkouts: dict[str, dict[str, int]] = {}
    for result in results:
        figure = result["instructions_per_webhook"]
        assert isinstance(figure, int)
        checkouts.setdefault(str(result["checkout"]), {})[str(result["target"])] = figure
    rows: list[dict[str, object]] = []
    first_app = next((t["app"] for t in checkouts.values() if "app" in t), None)
    for checkout, targets in checkouts.items():
        row: dict[str, object] = {"checkout": checkout, **{f"{t}_per_webhook": n for t, n in sorted(targets.items())}}
        if "app" in targets and "floor" in targets:
            row["app_over_floor"] = round(targets["app"] / targets["floor"], 3)
        if first_app and "app" in targets and len(checkouts) > 1:
            row["app_over_first_app"] = round(targets["app"] / first_app, 3)
        rows.append(row)
    return {"summary": rows}


def child_env(base: dict[str, str], target: str, database_url: str, redis_url: str, secret: str) -> dict[str, str]:
    """Return a child's environment: bench/webhook.py's server environment, with a fixed hash seed."""
    env = {k: v for k, v in base.items() if not k.startswith(("PYTEST_", "WEB_", "GUNICORN_"))}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": SETTINGS.get(target, SETTINGS["app"]),
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "BENCH_WEBHOOK_SECRET": secret,
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
            "PYTHONHASHSEED": "0",
            # Reconnecting every 60 s (the default) would cost a share that grows with valgrind's wall time.
            "CONN_MAX_AGE": "86400",
            # sys.path[0] is this checkout, not the cwd (the child inserts --checkout's DIR before its imports).
            "PYTHONSAFEPATH": "1",
            "PYTHONPATH": str(bench_webhook.BASE_DIR),
        }
    )
    return env


def run_child(
    args: argparse.Namespace, checkout: Path, target: str, secret: str, tmp: Path, tag: str, count: int = 0
) -> tuple[dict[str, object], Path]:
    """Run one child (under callgrind unless it prepares); return its last stdout line (JSON) and valgrind's log."""
    command = [sys.executable, "-m", "bench.webhook_instructions", "--child", target, "--checkout", str(checkout),
               "--count", str(count), "--tag", tag, "--database-url", args.database_url,
               "--redis-url", args.redis_url]  # fmt: skip
    valgrind_log = tmp / f"valgrind-{tag}.log"
    if target != "prepare":
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp / f'callgrind-{tag}.out'}",
                   f"--log-file={valgrind_log}", *command]  # fmt: skip
    env = child_env(dict(os.environ), target, args.database_url, args.redis_url, secret)
    with (tmp / f"child-{tag}.log").open("ab") as stderr:
        done = subprocess.run(command, cwd=checkout, env=env, stdout=subprocess.PIPE, stderr=stderr, check=False)
    if done.returncode:
        raise SystemExit(f"child {tag} exited with {done.returncode}: see {tmp}/child-{tag}.log and {valgrind_log}")
    return json.loads(done.stdout.decode().strip().splitlines()[-1]), valgrind_log


def measure(
    args: argparse.Namespace, checkout: Path, target: str, secret: str, tmp: Path, index: int
) -> dict[str, object]:
    """Run the target's short and long child under callgrind and return its figures (and the seconds it took)."""
    started = time.monotonic()
    runs = []
    for name, count in (("s", args.short), ("l", args.long)):
        tag = f"{target}{index}{name}"
        answer, valgrind_log = run_child(args, checkout, target, secret, tmp, tag, count)
        if answer["answered"] != count:
            raise SystemExit(f"child {tag} answered {answer['answered']} of {count} webhooks with 202")
        runs.append((count, collected_instructions(valgrind_log.read_text())))
        (tmp / f"callgrind-{tag}.out").unlink(missing_ok=True)  # tens of MB each; the totals are in the log
    return {**per_webhook(target, str(checkout), runs[0], runs[1]), "seconds": round(time.monotonic() - started, 1)}


def _app_pusher() -> Any:
    """Return the app's batch pusher (enhancements/services/pushing.py), or None in a checkout without one.

    Its thread sends what came in during up to 20 ms; under valgrind's slow-down how many webhooks share a push
    depends on timing, and the count moved by 15 % from run to run. With an hour's linger and one stop after the
    last webhook, both runs push at the stop, whatever the timing: the push itself cancels out, and the packaging
    of each id is counted as it is."""
    try:
        from enhancements.services.pipeline import _PUSHER
    except ImportError:
        return None
    return _PUSHER


def child(target: str, checkout: Path, count: int, tag: str, database_url: str, redis_url: str) -> None:
    """In the child: prepare the database (print the secret), or send count signed webhooks (print how many got 202)."""
    sys.path.insert(0, str(checkout))  # the checkout's project and apps; bench (harness, floor) stays this one's
    if target == "prepare":
        bench_webhook.recreate_database(database_url)
        print(json.dumps({"secret": bench_webhook.prepare(database_url, redis_url)}))
        return
    import base64
    import hashlib
    import hmac

    from django.db import connections

    from project.wsgi import application

    key = base64.b64decode(os.environ["BENCH_WEBHOOK_SECRET"].removeprefix("whsec_"))
    template = json.loads(bench_webhook.FIXTURE.read_text())
    path = f"/webhook/servicedesk/{bench_webhook.SLUG}/"
    pusher = _app_pusher() if target == "app" else None
    if pusher is not None:
        pusher.linger = 3600.0  # nothing is pushed until the stop after the last webhook, in batches of 256
    try:  # the tenant is reloaded every 30 s: a share per webhook that grows with valgrind's wall time
        from tickets import tenant_cache

        tenant_cache.TTL_SECONDS = float("inf")
    except ImportError:
        pass
    answered = 0
    for number in range(count):
        template["request"]["id"] = f"{tag}x{number}"
        body = json.dumps(template)
        msg_id, stamp = f"msg_{tag}_{number}", str(int(time.time()))
        digest = hmac.new(key, f"{msg_id}.{stamp}.{body}".encode(), hashlib.sha256).digest()
        headers = {"HTTP_WEBHOOK_ID": msg_id, "HTTP_WEBHOOK_TIMESTAMP": stamp}
        headers["HTTP_WEBHOOK_SIGNATURE"] = f"v1,{base64.b64encode(digest).decode()}"
        answered += bench_webhook._wsgi_post(application, path, body, headers) == 202
    if pusher is not None:
        pusher.stop()  # what is left of the last batch; the stop is in both runs, so it cancels out
    connections.close_all()  # no session left on the database: the next run drops it
    print(json.dumps({"answered": answered}))


def main(argv: list[str] | None = None) -> None:
    """Measure each checkout's app and floor (or be a child with --child) and print JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/bench_webhook_instructions")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--short", type=int, default=20, help="webhooks in the short run (start-up + these)")
    parser.add_argument("--long", type=int, default=220, help="webhooks in the long run")
    parser.add_argument("--targets", nargs="+", default=["app", "floor"], choices=["app", "floor"])
    parser.add_argument(
        "--checkout", type=Path, action="append", help="measure this checkout's code (repeat for A/B; default: this)"
    )
    parser.add_argument("--child", choices=["prepare", "app", "floor"], help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    checkouts = [path.resolve() for path in args.checkout or [bench_webhook.BASE_DIR]]
    if args.child:
        child(args.child, checkouts[0], args.count, args.tag, args.database_url, args.redis_url)
        return
    if not 0 < args.short < args.long:
        parser.error("need 0 < --short < --long")
    for checkout in checkouts:
        if not (checkout / "project" / "wsgi.py").is_file():
            parser.error(f"{checkout} is not a checkout of this project (no project/wsgi.py)")
    ensure_valgrind()
    tmp = Path(tempfile.mkdtemp(prefix="bench-instructions-"))
    results: list[dict[str, object]] = []
    started = time.monotonic()
    try:
        for index, checkout in enumerate(checkouts):
            answer, _ = run_child(args, checkout, "prepare", "", tmp, f"prep{index}")
            for target in args.targets:
                results.append(measure(args, checkout, target, str(answer["secret"]), tmp, index))
                print(json.dumps(results[-1]), flush=True)
    finally:
        import redis

        redis.Redis.from_url(args.redis_url).flushdb()  # the tasks the webhooks queued; no worker ran
    print(json.dumps({**summary(results), "seconds": round(time.monotonic() - started, 1), "logs": str(tmp)}))


if __name__ == "__main__":
    main()
