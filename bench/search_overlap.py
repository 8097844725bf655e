"""Hybrid search with and without the semantic window cache and the overlap of its two statements, against
lexical, interleaved query by query.

Reuses a data set loaded by bench/search.py. Each query runs lexically; hybrid with the tenant's semantic window
held in the process (tickets/search/window.py, the default); hybrid without it, the semantic statement on a helper
connection (SEARCH_WINDOW_CACHE_MB=0); and hybrid without it on one connection (also OVERLAP_THREADS = 0, as
inside a transaction), the order rotating; the results of the three hybrid runs must be identical. The windows are
loaded by a warm-up, as a running worker holds them.

    .venv/bin/python -m bench.search_overlap --database bench_sem_100k --queries 300
"""

from __future__ import annotations

import argparse
import os
import random
import time

import django

KINDS = ["lexical", "hybrid, window cached", "hybrid, overlapped statements", "hybrid, one connection"]


def _rss() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def _p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pg-url", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--database", required=True)
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()
    os.environ["DATABASE_URL"] = f"{args.pg_url.rstrip('/')}/{args.database}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    django.setup()
    from django.conf import settings

    from tickets.embeddings import current_model
    from tickets.models import Tenant, Ticket
    from tickets.search import hybrid, window

    if Ticket.objects.exclude(
        embedding_model__in=("", current_model())
    ).exists():  # the semantic search would find nothing
        raise SystemExit(f"{args.database} holds tickets embedded by another model than {current_model()}: reload it")

    tenants = list(Tenant.objects.all())
    queries = []
    for tenant in tenants:
        rows = Ticket.objects.filter(tenant=tenant).order_by("?").values_list("subject", "description")
        queries += [(tenant, f"{s}\n{d[:300]}") for s, d in rows[: max(1, args.queries // len(tenants))]]
    random.Random(7).shuffle(queries)
    cache_mb = settings.SEARCH_WINDOW_CACHE_MB

    def run(kind: str, tenant: Tenant, text: str) -> list:
        settings.SEARCH_WINDOW_CACHE_MB = cache_mb if kind == "hybrid, window cached" else 0
        hybrid.OVERLAP_THREADS = 0 if kind == "hybrid, one connection" else 4
        return hybrid.ticket_search_similar(tenant=tenant, text=text, mode="lexical" if kind == "lexical" else "hybrid")

    for tenant, text in queries[:20]:  # warm-up, the models loaded
        for kind in KINDS[2:]:
            run(kind, tenant, text)
    rss_before = _rss()
    for tenant in tenants:  # every tenant's window loaded, as a running worker holds them
        run("hybrid, window cached", tenant, "printer offline")
    held, rss_after = window.cache_bytes(), _rss()
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    differing = 0
    load = os.getloadavg()[0]
    began = time.time()
    for index, (tenant, text) in enumerate(queries):
        found = {}
        shift = index % len(KINDS)
        for kind in KINDS[shift:] + KINDS[:shift]:
            start = time.perf_counter()
            found[kind] = [(t.pk, s) for t, s in run(kind, tenant, text)]
            times[kind].append((time.perf_counter() - start) * 1000)
        differing += len({repr(found[kind]) for kind in KINDS[1:]}) > 1
    print(
        f"{args.database}: {len(queries)} queries, {time.strftime('%H:%M:%S', time.gmtime(began))} UTC,"
        f" {time.time() - began:.0f} s, load (1 min) {load:.1f} -> {os.getloadavg()[0]:.1f} on this machine"
    )
    print("| search | p50 ms | p95 ms | p99 ms | p95 / lexical p95 |\n|---|---|---|---|---|")
    lexical = _p(times["lexical"], 0.95)
    for kind, samples in times.items():
        p95 = _p(samples, 0.95)
        print(f"| {kind} | {_p(samples, 0.5):.1f} | {p95:.1f} | {_p(samples, 0.99):.1f} | {p95 / lexical:.2f}x |")
    print(f"- queries whose results differ between the three hybrid runs: {differing}")
    print(
        f"- windows held: {held / 2**20:.1f} MB for {len(tenants)} tenants; the process's RSS grew by"
        f" {(rss_after - rss_before) / 1024:.0f} MB when they were loaded"
    )
    hybrid.helpers_shutdown()


if __name__ == "__main__":
    main()
