"""Similar-ticket search at scale on PostgreSQL: hybrid against lexical in the same run, recall, memory.

Run (about 15 minutes on 2 cores; see docs/benchmarks.md):

    .venv/bin/python -m bench.search --sizes 100000,1000000

It (re)creates the database `bench_search` on --pg-url, migrates the tickets app, and for each size: loads a
generated history with COPY (10 tenants, a Zipf-like IT vocabulary, ticket lengths like real ones), builds the
index, ANALYZEs, then times ticket_search_similar() lexical and hybrid (with the tenants' semantic windows held in
the process, and without) interleaved query by query (the same load for each), semantic only, both without the
postings budget, and the naive baseline (an OR of every query word, ranked with ts_rank over every match) on the
same 200 queries, scores them against the generator's labels (a query's relevant tickets are those of its
problem, in its tenant), and reports the memory of a worker process.
The import's throughput is bench/ingest.py's. Results go to stdout as Markdown.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.database import database_recreate, database_url
from bench.history import COLUMNS, history_row

SEED = 20261126
TENANTS = 10

# The common words of IT tickets, most frequent first (the Zipf ranks).
GENERAL = """user error access email account password login computer laptop screen network server printer file
folder outlook windows office update install working issue time message connection share drive internet phone
teams application app system data backup restart reset new old slow page website browser chrome edge link
document excel word pdf print mailbox calendar meeting vpn wifi remote desktop monitor keyboard mouse device
mobile iphone android license software version upgrade settings profile permission group policy domain admin
certificate security virus alert warning blocked locked disabled expired sync onedrive sharepoint drive mapped
network storage disk space memory cpu performance crash freeze hang reboot boot startup login shutdown power
battery charger dock cable port switch router firewall dns dhcp ip address gateway proxy ssl tls
database sql query report dashboard crm erp invoice order customer supplier finance payroll hr onboarding
leaver starter mfa authenticator token code sms approve prompt sign signin credential""".split()  # noqa: SIM905
# Filler a user writes around the problem (mostly stop words for the english configuration).
FILLER = """the a to and is it i my on in for of this that not with when we can you have be but from
it's again now since this morning after before our all any some still just keeps every time also
please thanks hi hello team regards could would can't won't doesn't""".split()  # noqa: SIM905
TOPICS = [
    "email",
    "vpn",
    "printer",
    "account",
    "mfa",
    "share",
    "network",
    "server",
    "backup",
    "laptop",
    "teams",
    "sharepoint",
    "onedrive",
    "certificate",
    "phone",
    "software",
    "license",
    "database",
    "firewall",
    "wifi",
]
SUBTOPICS_PER_TOPIC = 100  # 2,000 distinct problems
PROBLEM_TERMS = 4


def _zipf_weights(n: int, s: float = 1.07) -> list[float]:
    weights = [1 / (rank**s) for rank in range(1, n + 1)]
    total = sum(weights)
    acc, out = 0.0, []
    for w in weights:
        acc += w / total
        out.append(acc)
    return out


class Generator:
    """Generate tickets and queries with known problems (topic + subtopic) per tenant."""

    def __init__(self, seed: int = SEED) -> None:
        self.rng = random.Random(seed)
        rng = self.rng
        syllables = "ka to ri mo sa ne lu vi de pa zo fe gi ha bo tu me ro xi qua".split()  # noqa: SIM905
        # The long tail: product names, error codes, component names a problem is recognised by.
        tail = set()
        while len(tail) < 6000:
            kind = rng.random()
            if kind < 0.4:
                tail.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))))
            elif kind < 0.7:
                tail.add(f"0x{rng.randrange(16**8):08x}")
            else:
                tail.add(f"{rng.choice(['err', 'evt', 'kb', 'code', 'build'])}{rng.randint(100, 99999)}")
        self.tail = sorted(tail)
        self.vocab = GENERAL + self.tail
        self.vocab_cum = _zipf_weights(len(self.vocab))
        self.filler_cum = _zipf_weights(len(FILLER), 0.8)
        self.problems: list[tuple[str, int, list[str]]] = []
        for topic in TOPICS:
            for index in range(SUBTOPICS_PER_TOPIC):
                terms = rng.sample(self.tail, PROBLEM_TERMS)
                self.problems.append((topic, index, terms))
        rng.shuffle(self.problems)
        self.problem_cum = _zipf_weights(len(self.problems), 0.8)

    def _words(self, count: int) -> list[str]:
        rng = self.rng
        general = rng.choices(self.vocab, cum_weights=self.vocab_cum, k=count)
        filler = rng.choices(FILLER, cum_weights=self.filler_cum, k=count)
        return [g if rng.random() < 0.55 else f for g, f in zip(general, filler, strict=True)]

    def _text(self, problem: tuple[str, int, list[str]], low: int, high: int, share: int) -> str:
        rng = self.rng
        topic, _, terms = problem
        # Ticket lengths are log-normal: most are short, some are long pasted logs.
        length = int(min(high, max(low, rng.lognormvariate(math.log((low + high) / 4), 0.6))))
        words = self._words(length)
        for term in rng.sample(terms, share) + [topic] * rng.randint(1, 2):
            words.insert(rng.randrange(len(words) + 1), term)
        return " ".join(words)

    def ticket(self, problem_index: int) -> tuple[str, str, str]:
        """Return (subject, description, resolution) of one ticket about the given problem."""
        problem = self.problems[problem_index]
        topic, _, terms = problem
        rng = self.rng
        subject_words = [*rng.sample(terms, 2), topic, *self._words(rng.randint(1, 4))]
        rng.shuffle(subject_words)
        return (
            " ".join(subject_words).capitalize(),
            self._text(problem, 12, 220, 2),
            self._text(problem, 8, 80, 1),
        )

    def problem_index(self) -> int:
        """Return a problem drawn with Zipf-like popularity (a few problems are very common)."""
        return self.rng.choices(range(len(self.problems)), cum_weights=self.problem_cum)[0]


# The indexes of migrations 0002 and 0011, dropped before a bulk COPY and built once after it.
INDEX_SQL = (
    "CREATE INDEX IF NOT EXISTS tickets_ticket_search_keys ON tickets_ticket"
    " USING gin (tickets_search_keys(tenant_id, search_document)) WITH (gin_pending_list_limit = 1024)"
    " WHERE is_resolved"
)
CODE_INDEX_SQL = (
    "CREATE INDEX IF NOT EXISTS tickets_ticket_embedding_window ON tickets_ticket"
    " (tenant_id, embedding_model, resolved_at DESC NULLS LAST, id DESC) INCLUDE (embedding_code, embedding)"
    " WHERE is_resolved AND embedding_code IS NOT NULL"
)


def _copy_tickets(gen: Generator, tenant_ids: list[int], start: int, count: int, labels: dict) -> float:
    """COPY `count` generated resolved tickets in; return the seconds it took."""
    from django.db import connection

    from tickets import embeddings

    base = datetime(2023, 1, 1, tzinfo=UTC)
    began = time.perf_counter()
    raw = connection.connection
    batch: list[dict[str, Any]] = []

    def flush(copy) -> None:
        # The history is embedded as the import path does it (subject + description, the configured model).
        texts = [embeddings.ticket_embedding_text(row["subject"], row["description"]) for row in batch]
        items = embeddings.embed_texts(texts)
        for row, item in zip(batch, items or [None] * len(batch), strict=True):
            copy.write_row(history_row(**row, embedded=item))
        batch.clear()

    with raw.cursor() as cursor, cursor.copy(f"COPY tickets_ticket ({COLUMNS}) FROM STDIN") as copy:
        for number in range(start, start + count):
            tenant_id = tenant_ids[number % len(tenant_ids)]
            problem = gen.problem_index()
            subject, description, resolution = gen.ticket(problem)
            labels.setdefault((tenant_id, problem), []).append(str(number))
            created = base + timedelta(minutes=number % 1_000_000)
            if len(batch) >= 2000:
                flush(copy)
            batch.append(
                {
                    "tenant_id": tenant_id,
                    "sdp_id": str(number),
                    "subject": subject[:500],
                    "description": description,
                    "category": f"{gen.problems[problem][0]}-{problem}",
                    "resolution": resolution,
                    "created": created,
                }
            )
        flush(copy)
    raw.commit()
    return time.perf_counter() - began


def _explain_median(search, by_id: dict, query_texts: list) -> None:
    """Print EXPLAIN ANALYZE of the main statement of the query whose latency is the median."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    timed = []
    for tenant_id, _, text in query_texts:
        with CaptureQueriesContext(connection) as captured:
            began = time.perf_counter()
            search.ticket_search_similar(tenant=by_id[tenant_id], text=text)
            elapsed = time.perf_counter() - began
        main = max(captured.captured_queries, key=lambda q: float(q["time"]))
        timed.append((elapsed, main["sql"]))
    timed.sort()
    for label, (elapsed, sql) in (("median", timed[len(timed) // 2]), ("p95", timed[int(len(timed) * 0.95)])):
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql)
            plan = [row[0] for row in cursor.fetchall()]
        keep = ("Scan", "Heap Blocks", "Rows Removed", "Buffers", "Execution", "Planning Time", "Sort Method")
        print(f"EXPLAIN ANALYZE, {label} query ({elapsed * 1000:.1f} ms end to end; score expressions elided):")
        print("```")
        for line in plan:
            if any(word in line for word in keep):
                print(line if len(line) < 160 else line[:157] + "...")
        print("```\n", flush=True)


def _percentiles(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)

    def pick(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(p * (len(ordered) - 1))))]

    return pick(0.50), pick(0.95), pick(0.99)


def _naive(cursor, tenant_id: int, text: str) -> list[str]:
    words = [w for w in "".join(c if c.isalnum() else " " for c in text.lower()).split() if len(w) > 1]
    cursor.execute(
        "SELECT sdp_id FROM tickets_ticket, to_tsquery('english', %s) AS q"
        " WHERE tenant_id = %s AND is_resolved AND search_document @@ q"
        " ORDER BY ts_rank(search_document, q) DESC LIMIT 5",
        [" | ".join(sorted(set(words))), tenant_id],
    )
    return [row[0] for row in cursor.fetchall()]


def run(sizes: list[int], queries: int, pg_url: str, database: str, reuse: bool, naive_queries: int) -> None:
    """Run the whole benchmark and print Markdown."""
    if not reuse:
        database_recreate(pg_url, database)
    os.environ["DATABASE_URL"] = database_url(pg_url, database)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    from tickets import embeddings, search
    from tickets.models import Tenant, Ticket
    from tickets.search import postgres as search_postgres
    from tickets.search import terms as search_terms
    from tickets.services import tenant_create_or_update

    call_command("migrate", "tickets", verbosity=0)
    tenants = [
        Tenant.objects.only("id", "slug").filter(slug=f"bench-{i}").first()
        or tenant_create_or_update(slug=f"bench-{i}", name=f"Bench {i}").tenant
        for i in range(TENANTS)
    ]
    tenant_ids = [t.pk for t in tenants]
    by_id = {t.pk: t for t in tenants}
    gen = Generator()
    labels: dict[tuple[int, int], list[str]] = {}
    loaded = Ticket.objects.exclude(sdp_id__startswith="imp-").count()
    stale = loaded and Ticket.objects.exclude(embedding_model__in=("", embeddings.current_model())).exists()
    if stale:  # loaded by another model (its name changed): the semantic search would find nothing
        raise SystemExit(
            f"{database} holds tickets embedded by another model than {embeddings.current_model()}:"
            " reload it (without --reuse) or run `manage.py reembed_tickets --all` on it first"
        )
    print(f"# bench/search.py — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, PostgreSQL, {TENANTS} tenants\n", flush=True)
    for size in sizes:
        print(f"## {size:,} tickets\n")
        if size > loaded:
            with connection.cursor() as cursor:
                # The GIN index is built once after the bulk load: far faster than maintaining it row by row.
                cursor.execute("DROP INDEX IF EXISTS tickets_ticket_search_keys")
                cursor.execute("DROP INDEX IF EXISTS tickets_ticket_embedding_code")
                cursor.execute("DROP INDEX IF EXISTS tickets_ticket_embedding_recent")
                cursor.execute("DROP INDEX IF EXISTS tickets_ticket_embedding_window")
            seconds = _copy_tickets(gen, tenant_ids, loaded, size - loaded, labels)
            print(f"- COPY of {size - loaded:,} tickets (tsvector computed, embedded): {seconds:.0f} s")
            loaded = size
            began = time.perf_counter()
            with connection.cursor() as cursor:
                cursor.execute("SET maintenance_work_mem = '1GB'")
                cursor.execute(INDEX_SQL)
                cursor.execute(CODE_INDEX_SQL)
                cursor.execute("VACUUM ANALYZE tickets_ticket")
            print(f"- GIN index build + VACUUM ANALYZE: {time.perf_counter() - began:.0f} s", flush=True)
        else:
            print(f"- reusing the {loaded:,} tickets already in {database}")
            with connection.cursor() as cursor:
                cursor.execute("VACUUM ANALYZE tickets_ticket")
        labels = {}
        for tenant_id, category, sdp_id in Ticket.objects.exclude(sdp_id__startswith="imp-").values_list(
            "tenant_id", "category", "sdp_id"
        ):
            labels.setdefault((tenant_id, int(category.rsplit("-", 1)[1])), []).append(sdp_id)

        # The queries: new tickets about problems that have history in their tenant, written afresh.
        qrng = random.Random(SEED + size)
        candidates = [key for key, ids in labels.items() if len(ids) >= 3]
        picked = qrng.sample(candidates, queries)
        query_texts = []
        for tenant_id, problem in picked:
            subject, description, _ = gen.ticket(problem)
            query_texts.append((tenant_id, problem, f"{subject}\n{description}"))
        search_postgres._pg_stats.clear()
        search_postgres._pg_sizes.clear()
        for tenant_id, _, text in query_texts[:20]:  # warm the caches as a running worker would have them
            search.ticket_search_similar(tenant=by_id[tenant_id], text=text)
            search.ticket_search_similar(tenant=by_id[tenant_id], text=text, mode="lexical")
        for tenant in tenants:  # every tenant's semantic window held (tickets/search/window.py), as in a worker
            search.ticket_search_similar(tenant=tenant, text="printer offline")
        load_before = os.getloadavg()[0]
        rows = []
        # ticket_search_similar() as shipped; the same without the postings budget (every essential term's postings
        # read: what the budget costs in recall); the naive baseline (on the first naive_queries queries).
        exhaustive = {"CANDIDATE_POSTINGS": 10**12, "CANDIDATE_SHARE": 1.0}
        # Lexical and hybrid on the same queries in the same run, interleaved query by query (the order alternating)
        # so that both see the same load on a shared machine; hybrid / lexical is the figure to read.
        # "no window cache": the semantic statement per search (SEARCH_WINDOW_CACHE_MB=0), as before the cache.
        uncached = {"SEARCH_WINDOW_CACHE_MB": 0}
        groups = [
            [
                ("lexical, first pass", {}, "lexical"),
                ("hybrid, first pass", {}, "hybrid"),
                ("hybrid, first pass, no window cache", uncached, "hybrid"),
            ],
            [("lexical, same queries again", {}, "lexical"), ("hybrid, same queries again", {}, "hybrid")],
            [("semantic only", {}, "semantic")],
            [
                ("lexical, no postings budget", exhaustive, "lexical"),
                ("hybrid, no postings budget", exhaustive, "hybrid"),
            ],
        ]
        for group in groups:
            measured: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name, _, _ in group}
            for index, (tenant_id, problem, text) in enumerate(query_texts):
                relevant = set(labels[(tenant_id, problem)])
                shift = index % len(group)  # the order rotating: each kind first, middle and last alike
                for name, overrides, mode in group[shift:] + group[:shift]:
                    # Postings budgets are module constants (terms.py), the window cache a setting.
                    target = {key: settings if key.startswith("SEARCH_") else search_terms for key in overrides}
                    saved = {key: getattr(target[key], key) for key in overrides}
                    for key, value in overrides.items():
                        setattr(target[key], key, value)
                    began = time.perf_counter()
                    found = search.ticket_search_similar(tenant=by_id[tenant_id], text=text, mode=mode)
                    measured[name][0].append((time.perf_counter() - began) * 1000)
                    for key, value in saved.items():
                        setattr(target[key], key, value)
                    matched = relevant & {t.sdp_id for t, _ in found}
                    measured[name][1].append(len(matched) / min(5, len(relevant)))
            for name, (samples, recalls) in measured.items():
                rows.append((name, len(query_texts), samples, recalls))
        samples, hits = [], []
        with connection.cursor() as cursor:
            for tenant_id, problem, text in query_texts[:naive_queries]:
                relevant = set(labels[(tenant_id, problem)])
                began = time.perf_counter()
                baseline = _naive(cursor, tenant_id, text)
                samples.append((time.perf_counter() - began) * 1000)
                hits.append(len(relevant & set(baseline)) / min(5, len(relevant)))
        if samples:
            rows.append(("naive OR + ts_rank", len(samples), samples, hits))
        print("\n| search | queries | p50 ms | p95 ms | p99 ms | recall@5 |\n|---|---|---|---|---|---|")
        for name, count, samples, hits in rows:
            p50, p95, p99 = _percentiles(samples)
            print(f"| {name} | {count} | {p50:.1f} | {p95:.1f} | {p99:.1f} | {statistics.mean(hits):.3f} |")
        by_name = {name: _percentiles(samples) for name, _, samples, _ in rows}
        for label, lexical, hybrid in (
            ("first pass", "lexical, first pass", "hybrid, first pass"),
            ("first pass, no window cache", "lexical, first pass", "hybrid, first pass, no window cache"),
            ("again", "lexical, same queries again", "hybrid, same queries again"),
        ):
            ratios = [h / lx for h, lx in zip(by_name[hybrid], by_name[lexical], strict=True)]
            print(f"- hybrid / lexical ({label}): p50 {ratios[0]:.2f}x, p95 {ratios[1]:.2f}x, p99 {ratios[2]:.2f}x")
        print(
            f"\nLoad average (1 min) on this {os.cpu_count()}-core machine: {load_before:.1f} before the queries,"
            f" {os.getloadavg()[0]:.1f} after (other work on the machine inflates latencies).\n",
            flush=True,
        )
        _explain_median(search, by_id, query_texts)

        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_size_pretty(pg_total_relation_size('tickets_ticket'))")
            table = cursor.fetchone()[0]
            cursor.execute("SELECT pg_size_pretty(pg_relation_size('tickets_ticket_search_keys'))")
            index = cursor.fetchone()[0]
            cursor.execute("SELECT pg_size_pretty(pg_relation_size('tickets_ticket_embedding_window'))")
            code_index = cursor.fetchone()[0]
        print(f"- Sizes: table with TOAST and indexes {table}, GIN index {index}, code index {code_index}")
        print(f"- Memory: {_worker_memory()}\n", flush=True)


_RSS_SCRIPT = """
import os, django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django.setup()
import enhancements.services, enhancements.tasks
def rss():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
before = rss()
if os.environ.get("LOAD_MODELS"):
    from tickets.embeddings import text_embed
    from tickets.language import text_language
    text_embed(["Outlook keeps asking for my password"])
    text_language("Outlook keeps asking for my password")
print(before, rss())
"""


def _worker_memory() -> str:
    """Return the RSS of a process that imports what a worker imports, before and after loading the models."""
    import subprocess

    results = []
    for load in ("", "1"):
        env = dict(os.environ, LOAD_MODELS=load)
        done = subprocess.run([sys.executable, "-c", _RSS_SCRIPT], env=env, capture_output=True, text=True, check=True)
        results.append(int(done.stdout.split()[-1]) / 1024)
    return (
        f"a process with Django and the pipeline imported holds {results[0]:.0f} MB RSS; with the embedding and"
        f" language models loaded and used, {results[1]:.0f} MB (+{results[1] - results[0]:.0f} MB per worker process)"
    )


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments and run."""
    parser = argparse.ArgumentParser(prog="python -m bench.search", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated history sizes, ascending")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--pg-url", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--database", default="bench_search")
    parser.add_argument("--naive-queries", type=int, default=None, help="run the naive baseline on the first N")
    parser.add_argument("--reuse", action="store_true", help="keep the database and the tickets already loaded")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if sizes != sorted(sizes):
        sys.exit("--sizes must be ascending")
    sys.stdout = io.TextIOWrapper(sys.stdout.buffer, line_buffering=True)
    naive = args.queries if args.naive_queries is None else args.naive_queries
    run(sizes, args.queries, args.pg_url, args.database, args.reuse, naive)


if __name__ == "__main__":
    main()
