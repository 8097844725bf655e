"""CPU per webhook with several threads calling project.wsgi in one process: gunicorn's shape without gunicorn.

    .venv/bin/python -m bench.webhook_threads --threads 4 --seconds 8
    # the same from another checkout, alternating, to compare two versions of the code in one run:
    for i in 1 2 3; do for dir in /path/a /path/b; do (cd $dir && .venv/bin/python -m bench.webhook_threads); done; done

It (re)creates the database, migrates it, creates the bench tenant (bench/webhook.py's `prepare`), warms up with
50 webhooks, then runs `--threads` threads sending signed webhooks (each a new ticket) for `--seconds`, and prints
one JSON line: webhooks answered, answers/s, and the process CPU per webhook (every thread of the process, the
queue pusher included). wrk and gunicorn are left out, so this moves less with the machine's load than
bench/webhook.py; it measures the application's own CPU, not HTTP.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import itertools
import json
import os
import threading
import time

from bench import webhook as bench_webhook


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/bench_webhook_threads")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args(argv)
    os.environ.setdefault("LOG_FORMAT", "json")
    bench_webhook.recreate_database(args.database_url)
    secret = bench_webhook.prepare(args.database_url, args.redis_url)
    from django.db import connections

    from project.wsgi import application

    key = base64.b64decode(secret.removeprefix("whsec_"))
    template = json.loads(bench_webhook.FIXTURE.read_text())
    path = f"/webhook/servicedesk/{bench_webhook.SLUG}/"
    numbers = itertools.count()
    lock = threading.Lock()

    def one() -> int:
        with lock:
            number = next(numbers)
        body = json.dumps({**template, "request": {**template["request"], "id": f"thr{number}"}})
        msg_id, stamp = f"msg_thr_{number}", str(int(time.time()))
        digest = hmac.new(key, f"{msg_id}.{stamp}.{body}".encode(), hashlib.sha256).digest()
        headers = {"HTTP_WEBHOOK_ID": msg_id, "HTTP_WEBHOOK_TIMESTAMP": stamp}
        headers["HTTP_WEBHOOK_SIGNATURE"] = f"v1,{base64.b64encode(digest).decode()}"
        return bench_webhook._wsgi_post(application, path, body, headers)

    for _ in range(50):  # imports, the tenant cache, the prepared statement
        assert one() == 202
    answered = [0]
    stop = time.monotonic() + args.seconds

    def loop() -> None:
        try:
            while time.monotonic() < stop:
                assert one() == 202
                with lock:
                    answered[0] += 1
        finally:
            connections.close_all()

    cpu, wall = time.process_time(), time.monotonic()
    threads = [threading.Thread(target=loop) for _ in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    count = answered[0]
    print(json.dumps({
        "checkout": os.getcwd(), "threads": args.threads, "webhooks": count, "per_second": round(count / wall),
        "cpu_ms_per_webhook": round(cpu / count * 1000, 3), "load": round(os.getloadavg()[0], 2),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
