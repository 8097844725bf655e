"""Outage clusters: quality on the labelled storm set, the cluster check's cost at 1M history tickets, and the time
from the threshold-crossing ticket to the follow-up notes with real processes.

Run (about 10 minutes on 2 cores; see docs/benchmarks.md):

    .venv/bin/python -m bench.clusters --history 1000000

It (re)creates the PostgreSQL database `bench_clusters` on --pg-url and migrates it, then:
1. quality: runs tests/data/storms.json through cluster_check() in arrival order, with the shipped embeddings and
   without them, and prints pairwise precision and recall, recall per storm and the background tickets wrongly
   clustered;
2. cost: times cluster_check() for 300 incoming tickets (storms at realistic rates among background tickets) with an
   empty history and again after COPYing --history resolved tickets into the same tenant; the baseline in the same
   run is the whole in-process enhancement of a ticket (context search, offline generation, render) at that size;
3. latency: starts gunicorn and qcluster (2 workers) against the database and the SDP fake, sends a burst of
   storm tickets one second apart, and measures from the webhook of the ticket that crosses the threshold to the
   follow-up notes of the earlier tickets in SDP; the baseline is the same ticket's own note.
Results go to stdout as Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from itertools import combinations
from pathlib import Path

from bench.database import database_recreate, database_url

ROOT = Path(__file__).resolve().parent.parent
STORMS = json.loads((ROOT / "tests" / "data" / "storms.json").read_text())


def _pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


# --- 1. quality ---------------------------------------------------------------------------------------------------
def quality(provider: str) -> None:
    """Print the storm set's clustering figures with the given embeddings provider."""
    from django.conf import settings

    from clusters.models import ClusterCandidate
    from clusters.services import cluster_check
    from tickets.models import Ticket
    from tickets.services import tenant_create_or_update

    settings.EMBEDDINGS_PROVIDER = provider
    run = uuid.uuid4().hex[:6]
    start = datetime(2026, 11, 30, 8, tzinfo=UTC)
    tenants = {
        slug: tenant_create_or_update(slug=f"q{run}-{slug}", name=slug).tenant
        for slug in {t["tenant"] for t in STORMS["tickets"]}
    }
    began = time.perf_counter()
    for item in STORMS["tickets"]:
        ticket = Ticket.objects.create(
            tenant=tenants[item["tenant"]],
            sdp_id=item["id"],
            subject=item["subject"],
            description=item["description"],
            sdp_created_at=start + timedelta(minutes=item["minute"]),
        )
        cluster_check(ticket=ticket)
    seconds = time.perf_counter() - began
    rows = ClusterCandidate.objects.filter(tenant__in=tenants.values()).select_related("ticket", "tenant")
    slug_of = {t.pk: s for s, t in tenants.items()}
    predicted = {f"{slug_of[r.tenant_id]}/{r.ticket.sdp_id}": r.cluster_id for r in rows}
    labels = {f"{t['tenant']}/{t['id']}": t["storm"] for t in STORMS["tickets"]}
    tp = fp = fn = 0
    per_storm: dict[str, list[int]] = {}
    for a, b in combinations(labels, 2):
        same_label = labels[a] is not None and labels[a] == labels[b]
        same_pred = predicted[a] is not None and predicted[a] == predicted[b]
        tp += same_label and same_pred
        fp += same_pred and not same_label
        fn += same_label and not same_pred
        if same_label:
            per_storm.setdefault(labels[a], [0, 0])
            per_storm[labels[a]][0] += same_pred
            per_storm[labels[a]][1] += 1
    wrongly = sum(1 for key, storm in labels.items() if storm is None and predicted[key] is not None)
    background = sum(1 for storm in labels.values() if storm is None)
    print(f"### Quality, embeddings `{provider}` ({len(labels)} tickets, {seconds:.1f} s)\n")
    print(f"- pairwise precision **{tp / (tp + fp):.3f}**, recall **{tp / (tp + fn):.3f}**")
    print(f"- background and near-miss tickets put in a cluster: {wrongly} of {background}")
    print("- recall per storm (pairs kept together): " + ", ".join(
        f"{storm} {kept / pairs:.2f}" for storm, (kept, pairs) in sorted(per_storm.items())
    ) + "\n")  # fmt: skip


# --- 2. cost --------------------------------------------------------------------------------------------------------
WORDS = """vpn printer outlook email password teams sharepoint onedrive laptop monitor dock network wifi server backup
excel word sap crm invoice payroll phone voicemail license adobe chrome edge certificate mfa account login share drive
folder file sync calendar meeting scanner toner queue driver update install reset locked expired slow crash""".split()  # noqa: SIM905


def _copy_history(tenant_id: int, count: int) -> float:
    from django.db import connection

    from bench.search import CODE_INDEX_SQL, INDEX_SQL

    rng = random.Random(14)
    base = datetime(2024, 1, 1, tzinfo=UTC)
    began = time.perf_counter()
    with connection.cursor() as cursor:
        # Built once after the load (as bench/search.py does): far faster than maintaining them row by row.
        cursor.execute("DROP INDEX IF EXISTS tickets_ticket_search_keys")
        cursor.execute("DROP INDEX IF EXISTS tickets_ticket_embedding_code")
        cursor.execute("DROP INDEX IF EXISTS tickets_ticket_embedding_window")  # migration 0011's (CODE_INDEX_SQL)
    columns = (
        "tenant_id, sdp_id, subject, description, status, priority, category, requester_name, requester_email,"
        " technician, resolution, sdp_created_at, resolved_at, source, is_resolved, raw, created_at, updated_at,"
        " embedding_model, language"
    )
    with connection.connection.cursor() as cursor, cursor.copy(f"COPY tickets_ticket ({columns}) FROM STDIN") as copy:
        for n in range(count):
            words = rng.sample(WORDS, 6)
            created = base + timedelta(minutes=n % 900_000)
            copy.write_row((
                tenant_id, f"h{n}", f"{words[0]} {words[1]} not working", " ".join(words) + " since this morning.",
                "Closed", "Medium", words[0], "User", f"user{n % 5000}@example.com", "Tech", f"Fixed the {words[0]}.",
                created, created + timedelta(hours=2), "import", True, "{}", created, created, "", "",
            ))  # fmt: skip
    connection.connection.commit()
    with connection.cursor() as cursor:
        cursor.execute("SET maintenance_work_mem = '512MB'")
        cursor.execute(INDEX_SQL)
        cursor.execute(CODE_INDEX_SQL)
        cursor.execute("ANALYZE tickets_ticket")
    return time.perf_counter() - began


def _incoming(count: int, seed: int) -> list[tuple[str, str, float]]:
    """Return (subject, description, minute) of incoming tickets: storm bursts among background tickets."""
    rng = random.Random(seed)
    storms = [t for t in STORMS["tickets"] if t["storm"]]
    background = [t for t in STORMS["tickets"] if not t["storm"]]
    out, minute = [], 0.0
    while len(out) < count:
        pool = storms if rng.random() < 0.5 else background
        item = rng.choice(pool)
        out.append((item["subject"], item["description"], minute))
        minute += rng.expovariate(1 / 1.5)
    return out


def cost(history: int) -> None:
    """Print the per-ticket cost of cluster_check with an empty history and at `history` tickets."""
    from django.db import connection, reset_queries
    from django.test.utils import CaptureQueriesContext

    from clusters.services import cluster_check
    from enhancements.models import Enhancement
    from enhancements.services import enhancement_process
    from tickets.indexing import ticket_index
    from tickets.models import Ticket
    from tickets.services import tenant_create_or_update

    print("### Cost per incoming ticket\n")
    print(
        "| history tickets | cluster check median | p95 | SQL per check | embedding the new ticket (median) "
        "| whole enhancement median (baseline) | check / baseline |"
    )
    print("|---|---|---|---|---|---|---|")
    tenant = tenant_create_or_update(slug="cost", name="Cost").tenant
    for size in (0, history):
        if size:
            seconds = _copy_history(tenant.pk, size)
            print(f"<!-- COPY of {size:,} history tickets: {seconds:.0f} s -->")
        samples, queries, whole, embed = [], [], [], []
        start = datetime(2026, 12, 1, 8, tzinfo=UTC) + timedelta(days=size % 7)
        for n, (subject, description, minute) in enumerate(_incoming(300, seed=size)):
            ticket = Ticket.objects.create(
                tenant=tenant, sdp_id=f"new-{size}-{n}", subject=subject, description=description,
                sdp_created_at=start + timedelta(minutes=minute), requester_email=f"user{n % 50}@example.com",
            )  # fmt: skip
            reset_queries()
            # The embedding of the new ticket (which the check does first) is timed apart from the check itself.
            began = time.perf_counter()
            ticket = ticket_index(ticket=ticket)
            embed.append(time.perf_counter() - began)
            with CaptureQueriesContext(connection) as captured:
                began = time.perf_counter()
                cluster_check(ticket=ticket)
                samples.append(time.perf_counter() - began)
            queries.append(len(captured))
            if n % 10 == 0:
                enhancement = Enhancement.objects.create(tenant=tenant, ticket=Ticket.objects.create(
                    tenant=tenant, sdp_id=f"whole-{size}-{n}", subject=subject, description=description,
                    sdp_created_at=start + timedelta(minutes=minute + 0.01),
                ))  # fmt: skip
                began = time.perf_counter()
                enhancement_process(enhancement_id=str(enhancement.pk))
                whole.append(time.perf_counter() - began)
        median, p95 = statistics.median(samples), _pct(samples, 0.95)
        base = statistics.median(whole)
        print(
            f"| {size:,} | {median * 1000:.1f} ms | {p95 * 1000:.1f} ms | {statistics.median(queries):.0f} | "
            f"{statistics.median(embed) * 1000:.1f} ms | {base * 1000:.1f} ms | {median / base:.3f} |"
        )
    print()


# --- 3. latency -------------------------------------------------------------------------------------------------------
def latency(bursts: int) -> None:
    """Print the time from the threshold-crossing webhook to the follow-up notes, with real processes."""
    import tempfile

    from tests.fakes.sdp import FakeServiceDesk, sdp_time
    from tests.processes import running_stack
    from tests.signing import sign_webhook
    from tickets.services import tenant_create_or_update

    vpn = [t for t in STORMS["tickets"] if t["storm"] == "acme-vpn-60"]
    followup_delays, own_delays = [], []
    with FakeServiceDesk(auth="authtoken", api_key="bench-key") as sdp, tempfile.TemporaryDirectory() as tmp:
        slug = f"lat{uuid.uuid4().hex[:6]}"
        result = tenant_create_or_update(slug=slug, name="Latency", sdp_base_url=sdp.url, sdp_api_key=sdp.api_key)
        with running_stack(Path(tmp), Q_WORKERS="2", SDP_ALLOW_INSECURE_URLS="1") as stack:
            for burst in range(bursts):
                ids = [f"b{burst}-{n}" for n in range(3)]
                crossing_sent = 0.0
                for n, sdp_id in enumerate(ids):
                    item = vpn[n]
                    created = int((time.time() - 60 + burst * 3600) * 1000)
                    request = {"id": sdp_id, "subject": item["subject"], "description": item["description"],
                               "created_time": sdp_time(created + n * 60_000)}  # fmt: skip
                    sdp.add_request(request)
                    body = json.dumps({"event": "request_created", "request": request}).encode()
                    headers = sign_webhook(result.secret, body)
                    if n < 2:
                        stack.request(
                            "POST",
                            f"/webhook/servicedesk/{slug}/",
                            body,
                            {"Content-Type": "application/json", **headers},
                        )
                        _wait(lambda sdp_id=sdp_id: len(sdp.notes.get(sdp_id, [])) >= 1)
                        time.sleep(1.0)
                        continue
                    crossing_sent = time.monotonic()
                    stack.request(
                        "POST", f"/webhook/servicedesk/{slug}/", body, {"Content-Type": "application/json", **headers}
                    )
                own = _wait(lambda ids=ids: len(sdp.notes.get(ids[2], [])) >= 1)
                both = _wait(lambda ids=ids: all(len(sdp.notes.get(i, [])) >= 2 for i in ids[:2]))
                own_delays.append(own - crossing_sent)
                followup_delays.append(both - crossing_sent)
    print("### Threshold-crossing ticket to follow-up notes (gunicorn + qcluster, 2 workers, SDP fake)\n")
    print(f"- bursts: {bursts}; follow-up notes of both earlier tickets in SDP: median "
          f"**{statistics.median(followup_delays):.2f} s** (max {max(followup_delays):.2f} s)")  # fmt: skip
    print(f"- baseline, the crossing ticket's own note: median {statistics.median(own_delays):.2f} s; ratio "
          f"{statistics.median(followup_delays) / statistics.median(own_delays):.2f}\n")  # fmt: skip


def _wait(predicate, timeout: float = 60.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(0.02)
    raise TimeoutError("not reached in time")


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and run the three parts."""
    parser = argparse.ArgumentParser(prog="python -m bench.clusters", description=__doc__.splitlines()[0])
    parser.add_argument("--history", type=int, default=1_000_000, help="history tickets for the cost part")
    parser.add_argument("--bursts", type=int, default=5)
    parser.add_argument("--pg-url", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--database", default="bench_clusters")
    parser.add_argument("--parts", default="quality,cost,latency")
    args = parser.parse_args(argv)
    database_recreate(args.pg_url, args.database)
    os.environ["DATABASE_URL"] = database_url(args.pg_url, args.database)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    os.environ.setdefault("SDP_ALLOW_INSECURE_URLS", "1")
    os.environ.setdefault("LLM_PROVIDER", "offline")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    load = os.getloadavg()
    print(f"# bench/clusters.py — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, PostgreSQL, load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")  # fmt: skip
    parts = args.parts.split(",")
    if "quality" in parts:
        quality("local")
        quality("off")
    if "cost" in parts:
        cost(args.history)
    if "latency" in parts:
        latency(args.bursts)


if __name__ == "__main__":
    main()
