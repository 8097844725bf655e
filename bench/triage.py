"""Triage at scale on PostgreSQL: leave-one-out accuracy and coverage over a 100k-ticket history, and its cost.

Run (see docs/benchmarks.md, "Triage"):

    .venv/bin/python -m bench.triage --size 100000 --sample 400

It (re)creates the database `bench_triage` on --pg-url, migrates, loads one tenant's resolved history drawn
from the labelled triage set's problems (tests/fixtures/triage/generate.py: the same reports, names and label
noise, at any size) with COPY, ANALYZEs, then on the same spread sample of tickets times:
  - the baseline: the similar-ticket search alone (what every enhancement already does), and
  - triage's leave-one-out (search of 10 neighbours + the vote on five fields, per ticket),
and fits and stores the calibrations, printing accuracy and coverage per field and threshold as Markdown.
Embeddings are off in this run (lexical search), so the figures isolate triage's own cost.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta

from bench.database import database_recreate, database_url

SEED = 20261201


def _load(tenant_id: int, size: int) -> float:
    """COPY `size` labelled resolved tickets into the tenant's history; return the seconds it took."""
    from django.db import connection

    from tests.fixtures.triage.generate import build
    from tests.fixtures.triage.load import sdp_request

    columns = (
        "tenant_id, sdp_id, subject, description, status, priority, category, requester_name, requester_email,"
        " technician, resolution, sdp_created_at, resolved_at, source, is_resolved, raw, created_at, updated_at,"
        " embedding_model, language"
    )
    began = time.perf_counter()
    data = build(count=size, seed=SEED)
    base = datetime(2024, 1, 1, tzinfo=UTC)
    raw = connection.connection
    with raw.cursor() as cursor, cursor.copy(f"COPY tickets_ticket ({columns}) FROM STDIN") as copy:
        for number, item in enumerate(data["tickets"]):
            created = base + timedelta(minutes=number)
            copy.write_row(
                (
                    tenant_id, f"{item['sdp_id']}-{number}", item["subject"], item["description"], "Resolved",
                    item["priority"], item["category"], "Bench User", "user@example.com", item["technician"],
                    item["resolution"], created, created + timedelta(hours=3), "import", True,
                    json.dumps(sdp_request(item)), created, created, "", "",
                )
            )  # fmt: skip
    raw.commit()
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE tickets_ticket")
    return time.perf_counter() - began


def run(size: int, sample: int, pg_url: str, database: str) -> None:
    """Run the benchmark and print Markdown."""
    database_recreate(pg_url, database)
    os.environ["DATABASE_URL"] = database_url(pg_url, database)
    os.environ["EMBEDDINGS_PROVIDER"] = "off"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    from django.core.management import call_command

    from enhancements.triage.calibration import triage_report_build
    from enhancements.triage.engine import neighbours_find
    from tickets import search
    from tickets.models import Ticket
    from tickets.services import tenant_create_or_update

    call_command("migrate", verbosity=0)
    tenant = tenant_create_or_update(slug="bench-triage", name="Bench triage").tenant
    load_seconds = _load(tenant.pk, size)
    print(f"# bench/triage.py — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, PostgreSQL, load {os.getloadavg()}\n")
    print(f"History: {size} resolved tickets of one tenant, loaded in {load_seconds:.1f} s.\n")

    tickets = list(Ticket.objects.filter(tenant=tenant).order_by("id"))
    step = max(1, len(tickets) // sample)
    chosen = tickets[::step][:sample]
    # Warm the planner statistics and caches once, then time baseline and triage on the same tickets.
    for ticket in chosen[:20]:
        neighbours_find(tenant=tenant, ticket=ticket)
    began = time.perf_counter()
    for ticket in chosen:
        search.ticket_search_similar(
            tenant=tenant, text=f"{ticket.subject}\n{ticket.description}", limit=10, exclude_sdp_id=ticket.sdp_id
        )
    baseline = time.perf_counter() - began
    report = triage_report_build(tenant=tenant, sample=sample)
    triage = report["seconds"]
    print(f"Sample: {len(chosen)} tickets spread over the history (leave-one-out: each triaged from the others).\n")
    print("| run | total s | ms per ticket |")
    print("|---|---|---|")
    print(f"| baseline: similar-ticket search (10) | {baseline:.1f} | {1000 * baseline / len(chosen):.1f} |")
    print(f"| triage leave-one-out (search + vote, 5 fields) | {triage:.1f} | {1000 * triage / len(chosen):.1f} |")
    print(f"\nRatio triage / baseline: **{triage / baseline:.2f}x**.\n")
    print("| field | suggested | right overall | ≥0.7: coverage / right | ≥0.8 | ≥0.9 | advised (90% right) |")
    print("|---|---|---|---|---|---|---|")
    for name, data in report["fields"].items():
        rows = {r["threshold"]: r for r in data["thresholds"]}

        def cell(t: float, rows: dict = rows) -> str:
            r = rows[t]
            right = "—" if r["accuracy"] is None else f"{r['accuracy']:.1%}"
            return f"{r['coverage']:.1%} / {right}"

        overall = "—" if data["accuracy_all"] is None else f"{data['accuracy_all']:.1%}"
        print(
            f"| {name} | {data['suggested']} of {data['tickets']} | {overall} | {cell(0.7)} | {cell(0.8)} | "
            f"{cell(0.9)} | {data['advised_threshold'] or 'none'} |"
        )
    spread = [b for f in report["fields"].values() for b in f["calibration"] if b["count"] >= 25]
    if spread:
        gaps = [abs(b["accuracy"] - b["mean_confidence"]) for b in spread]
        print(
            f"\nCalibration (cross-fitted): |share right − confidence| over bands of ≥25 tickets: median "
            f"{statistics.median(gaps):.3f}, max {max(gaps):.3f}."
        )


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(prog="python -m bench.triage", description=__doc__)
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--sample", type=int, default=400)
    parser.add_argument(
        "--pg-url", default=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    )
    parser.add_argument("--database", default="bench_triage")
    args = parser.parse_args(argv)
    sys.path.insert(0, os.getcwd())
    run(args.size, args.sample, args.pg_url, args.database)


if __name__ == "__main__":
    main()
