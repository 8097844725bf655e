"""Hybrid search with and without the overlap of its two statements, against lexical, interleaved query by query.

Reuses a data set loaded by bench/search.py. Each query runs lexically, hybrid with the semantic statement on a
helper connection (tickets/search/hybrid.py, the default on PostgreSQL outside a transaction) and hybrid on one
connection (OVERLAP_THREADS = 0, as inside a transaction), the order alternating; the results of the two hybrid
runs must be identical.

    .venv/bin/python -m bench.search_overlap --database bench_search_i12s_100k --queries 300
"""

from __future__ import annotations

import argparse
import os
import random
import time

import django


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
    from tickets.embeddings import current_model
    from tickets.models import Tenant, Ticket
    from tickets.search import hybrid

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

    def run(kind: str, tenant: Tenant, text: str) -> list:
        hybrid.OVERLAP_THREADS = 0 if kind == "hybrid, one connection" else 4
        return hybrid.ticket_search_similar(tenant=tenant, text=text, mode="lexical" if kind == "lexical" else "hybrid")

    kinds = ["lexical", "hybrid, overlapped", "hybrid, one connection"]
    for tenant, text in queries[:10]:  # warm-up
        for kind in kinds:
            run(kind, tenant, text)
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    differing = 0
    load = os.getloadavg()[0]
    for index, (tenant, text) in enumerate(queries):
        found = {}
        for kind in kinds if index % 2 else reversed(kinds):
            began = time.perf_counter()
            found[kind] = [(t.pk, s) for t, s in run(kind, tenant, text)]
            times[kind].append((time.perf_counter() - began) * 1000)
        differing += found["hybrid, overlapped"] != found["hybrid, one connection"]
    print(
        f"{args.database}: {len(queries)} queries, load (1 min) {load:.1f} -> {os.getloadavg()[0]:.1f} on this machine"
    )
    print("| search | p50 ms | p95 ms | p99 ms | p95 / lexical p95 |\n|---|---|---|---|---|")
    lexical = _p(times["lexical"], 0.95)
    for kind, samples in times.items():
        p95 = _p(samples, 0.95)
        print(f"| {kind} | {_p(samples, 0.5):.1f} | {p95:.1f} | {_p(samples, 0.99):.1f} | {p95 / lexical:.2f}x |")
    print(f"- queries whose hybrid results differ between the two: {differing}")
    hybrid.helpers_shutdown()


if __name__ == "__main__":
    main()
