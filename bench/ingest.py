"""Import throughput on PostgreSQL with and without embeddings, and memory per worker process.

Run (a few minutes on 2 cores; see docs/benchmarks.md, section Import):

    .venv/bin/python -m bench.ingest

It (re)creates the database `bench_ingest` on --pg-url, migrates the tickets app, loads a resolved history of
--history tickets with COPY (embedded, as an import would have left them), then pushes --tickets generated SDP
request objects (HTML description and resolution, as the API returns them) through the import path
(`ticket_fields_from_sdp` + `ticket_bulk_upsert`, pages of 100 as the SDP list API gives them) in a fresh process
per measurement, alternating:

- `off`: EMBEDDINGS_PROVIDER=off, the same-run baseline (language detection still runs);
- `local`: the embedded default (WordLlama), every ticket stored with its model, dimension, vector and language.

Each process reports tickets/s for a first import (every ticket new) and a re-import of the same pages (every
ticket unchanged: the idempotent path), its RSS after Django and the pipeline are imported, after the models are
loaded, and its peak during the import. The 1-minute load average is printed with each figure. With --profile the
last `local` import runs under cProfile and the top functions are printed. Results go to stdout as Markdown.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.database import database_recreate, database_url
from bench.history import COLUMNS, history_row
from bench.search import Generator

PAGE = 100
SEED = 20261201


def _setup(url: str, provider: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ["EMBEDDINGS_PROVIDER"] = provider
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()


def _status(key: str) -> float:
    """Return a /proc/self/status figure (VmRSS, VmHWM) in MiB."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(key + ":")) / 1024


def _load() -> float:
    return os.getloadavg()[0]


def _pages(count: int, prefix: str, seed: int) -> list[list[dict[str, Any]]]:
    gen = Generator(seed)
    pages = []
    for start in range(0, count, PAGE):
        page = []
        for offset in range(min(PAGE, count - start)):
            subject, description, resolution = gen.ticket(gen.problem_index())
            words = description.split()
            # HTML as SDP returns it: paragraphs, a line break, an entity.
            html = f"<div><p>{' '.join(words[: len(words) // 2])}</p><br /><p>{' '.join(words[len(words) // 2 :])}"
            page.append(
                {
                    "id": f"{prefix}{start + offset}",
                    "subject": subject,
                    "description": html + " &amp; thanks</p></div>",
                    "status": {"name": "Closed"},
                    "priority": {"name": "Medium"},
                    "category": {"name": "Bench"},
                    "technician": {"name": "Bench Tech"},
                    "requester": {"name": "Bench User", "email_id": "user@example.com"},
                    "created_time": {"value": "1761035400000"},
                    "resolved_time": {"value": "1761042600000"},
                    "resolution": {"content": f"<p>{resolution}</p>"},
                }
            )
        pages.append(page)
    return pages


def _import(tenant: Any, pages: list[list[dict[str, Any]]]) -> float:
    from tickets.models import Ticket
    from tickets.sdp.mapping import ticket_fields_from_sdp
    from tickets.services import ticket_bulk_upsert

    began = time.perf_counter()
    for page in pages:
        ticket_bulk_upsert(
            tenant=tenant, items=[(r["id"], ticket_fields_from_sdp(r)) for r in page], source=Ticket.Source.IMPORT
        )
    return time.perf_counter() - began


def measure(url: str, provider: str, tenant_id: int, prefix: str, count: int, seed: int, profile: bool) -> dict:
    """In a fresh process: import count new tickets, then the same again; return the figures."""
    _setup(url, provider)
    import enhancements.services  # what a worker process imports
    import enhancements.tasks  # noqa: F401
    from tickets.embeddings import current_model, text_embed
    from tickets.language import text_language
    from tickets.models import Tenant, Ticket

    rss_django = _status("VmRSS")
    text_language("Outlook keeps asking for my password")
    if current_model():
        text_embed(["Outlook keeps asking for my password"])
    rss_models = _status("VmRSS")
    tenant = Tenant.objects.get(pk=tenant_id)
    pages = _pages(count, prefix, seed)
    rss_start = _status("VmRSS")
    peak = [rss_start]
    running = threading.Event()
    running.set()

    def sample() -> None:
        while running.is_set():
            peak[0] = max(peak[0], _status("VmRSS"))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    load_first = _load()
    cpu = time.process_time()
    if profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
        first = _import(tenant, pages)
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
        profiled = out.getvalue()
    else:
        first = _import(tenant, pages)
        profiled = ""
    cpu = time.process_time() - cpu
    load_again = _load()
    again = _import(tenant, pages)
    running.clear()
    sampler.join()
    stored = Ticket.objects.filter(tenant=tenant, sdp_id__startswith=prefix)
    complete = stored.exclude(language="").count()
    if current_model():
        complete = stored.filter(embedding_model=current_model(), embedding_dim__gt=0, embedding__isnull=False).count()
    return {
        "provider": provider,
        "count": count,
        "first": first,
        "again": again,
        "cpu": cpu,
        "load_first": load_first,
        "load_again": load_again,
        "load_end": _load(),
        "rss_django": rss_django,
        "rss_models": rss_models,
        "rss_peak": max(peak[0], _status("VmHWM")),
        "stored": stored.count(),
        "complete": complete,
        "profile": profiled,
    }


def _copy_history(url: str, tenant_ids: list[int], count: int) -> float:
    """COPY count resolved, embedded tickets in (the history an import leaves); return the seconds it took."""
    from django.db import connection

    from tickets import embeddings

    gen = Generator(SEED)
    base = datetime(2023, 1, 1, tzinfo=UTC)
    began = time.perf_counter()
    raw = connection.connection
    with raw.cursor() as cursor, cursor.copy(f"COPY tickets_ticket ({COLUMNS}) FROM STDIN") as copy:
        for start in range(0, count, 2000):
            rows = [(n, *gen.ticket(gen.problem_index())) for n in range(start, min(count, start + 2000))]
            items = embeddings.embed_texts([embeddings.ticket_embedding_text(s, d) for _, s, d, _ in rows])
            for (number, subject, description, resolution), item in zip(rows, items, strict=True):
                copy.write_row(
                    history_row(
                        tenant_id=tenant_ids[number % len(tenant_ids)],
                        sdp_id=f"hist-{number}",
                        subject=subject,
                        description=description,
                        category="Bench",
                        resolution=resolution,
                        created=base + timedelta(minutes=number),
                        embedded=item,
                        language="en",
                    )
                )
    raw.commit()
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE tickets_ticket")
    return time.perf_counter() - began


def run(args: argparse.Namespace) -> None:
    """Run the whole benchmark and print Markdown."""
    database_recreate(args.pg_url, args.database)
    url = database_url(args.pg_url, args.database)
    _setup(url, "local")
    from django.core.management import call_command
    from django.db import connection

    from tickets.services import tenant_create_or_update

    call_command("migrate", "tickets", verbosity=0)
    tenants = [tenant_create_or_update(slug=f"bench-{i}", name=f"Bench {i}").tenant.pk for i in range(3)]
    print(f"# bench/ingest.py — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, PostgreSQL, {os.cpu_count()} cores\n")
    if args.history:
        seconds = _copy_history(url, tenants, args.history)
        print(f"- History: {args.history:,} resolved, embedded tickets COPYed in {seconds:.0f} s (load {_load():.1f})")
    connection.close()
    print(f"- Import: {args.tickets:,} tickets per measurement, pages of {PAGE}, one process each\n")
    print(
        "| round | embeddings | first import tickets/s | load | CPU of the process ms/ticket"
        " | re-import (unchanged) tickets/s | load"
        " | RSS Django MiB | RSS models loaded MiB | peak RSS MiB | stored / complete |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: its memory is its own
    rates: dict[str, list[float]] = {"off": [], "local": []}
    profile = ""
    run_id = int(time.time())
    plan = [(round_number, provider) for round_number in range(1, args.rounds + 1) for provider in ("off", "local")]
    if args.profile:
        plan.append((0, "local"))  # one more import, under cProfile: not in the figures (the profiler slows it)
    for round_number, provider in plan:
        last = round_number == 0
        with context.Pool(1) as pool:
            result = pool.apply(
                measure,
                (
                    url,
                    provider,
                    tenants[0],
                    f"imp-{run_id}-{round_number}-{provider}-",
                    args.tickets,
                    SEED + round_number,
                    last,
                ),
            )
        if last:
            profile = result["profile"]
            continue
        first, again = result["count"] / result["first"], result["count"] / result["again"]
        rates[provider].append(first)
        print(
            f"| {round_number} | {provider} | **{first:,.0f}** | {result['load_first']:.1f}"
            f" | {result['cpu'] * 1000 / result['count']:.2f} | {again:,.0f}"
            f" | {result['load_again']:.1f} | {result['rss_django']:.0f} | {result['rss_models']:.0f}"
            f" | {result['rss_peak']:.0f} | {result['stored']:,} / {result['complete']:,} |",
            flush=True,
        )
    ratios = [on / off for on, off in zip(rates["local"], rates["off"], strict=True)]
    print(
        f"\nWith embeddings / without, per round: {', '.join(f'{r:.2f}' for r in ratios)}"
        f" (load at the end {_load():.1f}).",
        flush=True,
    )
    if profile:
        print("\ncProfile of the last import with embeddings (top 25 by own time):\n```")
        print(profile.strip())
        print("```")


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments and run."""
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=20000, help="tickets per measured import")
    parser.add_argument("--history", type=int, default=20000, help="resolved tickets loaded before (COPY)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of (off, local), alternating")
    parser.add_argument("--profile", action="store_true", help="cProfile the last import with embeddings")
    parser.add_argument("--pg-url", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--database", default="bench_ingest")
    args = parser.parse_args(argv)
    sys.stdout = io.TextIOWrapper(sys.stdout.buffer, line_buffering=True)
    run(args)


if __name__ == "__main__":
    main()
