"""Retrieval quality on a labelled set: recall@1 and recall@5 per kind of query, per search mode.

The set (tests/fixtures/retrieval: tickets.json, queries.json, queries_extra.json) is loaded into the current
database inside a transaction that is rolled back, so the figures are those of this database's search backend
and nothing stays behind.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from django.db import transaction

from tickets.models import Tenant, Ticket
from tickets.search import MODES, ticket_search_similar

QUERY_FILES = ("queries.json", "queries_extra.json")


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def retrieval_load_queries(*, directory: Path) -> list[dict[str, Any]]:
    """Return the set's queries, each with its `kind` (original, paraphrased, other_language)."""
    queries = []
    for name in QUERY_FILES:
        path = directory / name
        if path.exists():
            for query in json.loads(path.read_text(encoding="utf-8")):
                queries.append({"kind": "original", **query})
    return queries


def retrieval_load_history(*, directory: Path, prefix: str = "") -> dict[str, Tenant]:
    """Store the set's history tickets through the import path; return the tenants by the set's slug."""
    from tickets.services import tenant_create_or_update, ticket_bulk_upsert

    by_tenant: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for row in json.loads((directory / "tickets.json").read_text(encoding="utf-8")):
        fields = {
            key: row.get(key, "")
            for key in ("subject", "description", "status", "priority", "category", "resolution", "technician")
        }
        fields |= {
            "requester_name": row.get("requester_name", ""),
            "requester_email": row.get("requester_email", ""),
            "sdp_created_at": _when(row.get("created_at")),
            "resolved_at": _when(row.get("resolved_at")),
            "is_resolved": row["status"] in Ticket.RESOLVED_STATUSES,
        }
        by_tenant[row["tenant"]].append((str(row["sdp_id"]), fields))
    tenants = {}
    for slug, items in by_tenant.items():
        tenants[slug] = tenant_create_or_update(slug=f"{prefix}{slug}", name=slug.title()).tenant
        ticket_bulk_upsert(tenant=tenants[slug], items=items, source=Ticket.Source.IMPORT)
    return tenants


@dataclass
class Figures:
    """Recall of one mode on one kind of query."""

    queries: int = 0
    hits_at_1: float = 0.0
    recall_at_5: float = 0.0
    misses: list[str] = field(default_factory=list)

    @property
    def recall1(self) -> float:
        """Return recall@1 (the share of queries whose first result is relevant)."""
        return self.hits_at_1 / self.queries if self.queries else 0.0

    @property
    def recall5(self) -> float:
        """Return recall@5 (relevant found in the top 5 over min(5, relevant), averaged)."""
        return self.recall_at_5 / self.queries if self.queries else 0.0


def retrieval_evaluate_queries(
    *, tenants: dict[str, Tenant], queries: list[dict[str, Any]], modes: tuple[str, ...] = MODES
) -> dict[str, dict[str, Figures]]:
    """Return {mode: {kind: Figures}} for the queries against the loaded history (kind "all" included)."""
    report: dict[str, dict[str, Figures]] = {}
    for mode in modes:
        by_kind: dict[str, Figures] = defaultdict(Figures)
        for query in queries:
            found = [
                t.sdp_id
                for t, _ in ticket_search_similar(tenant=tenants[query["tenant"]], text=query["text"], mode=mode)
            ]
            relevant = set(query["relevant"])
            recall = len(relevant & set(found[:5])) / min(len(relevant), 5)
            for kind in (query["kind"], "all"):
                figures = by_kind[kind]
                figures.queries += 1
                figures.hits_at_1 += 1.0 if found[:1] and found[0] in relevant else 0.0
                figures.recall_at_5 += recall
                if recall < 1:
                    figures.misses.append(query["id"])
        report[mode] = dict(by_kind)
    return report


def retrieval_evaluate(*, directory: Path, modes: tuple[str, ...] = MODES) -> dict[str, dict[str, Figures]]:
    """Load the set into this database, measure every mode, roll everything back; return the figures."""
    with transaction.atomic():
        tenants = retrieval_load_history(directory=directory, prefix="retrieval-eval-")
        report = retrieval_evaluate_queries(
            tenants=tenants, queries=retrieval_load_queries(directory=directory), modes=modes
        )
        transaction.set_rollback(True)
    return report


def retrieval_render_markdown(*, report: dict[str, dict[str, Figures]], vendor: str) -> str:
    """Return the figures as a Markdown table."""
    lines = ["| backend | mode | kind | queries | recall@1 | recall@5 |", "|---|---|---|---|---|---|"]
    for mode, by_kind in report.items():
        for kind in sorted(by_kind, key=lambda k: (k == "all", k)):
            f = by_kind[kind]
            lines.append(f"| {vendor} | {mode} | {kind} | {f.queries} | {f.recall1:.3f} | {f.recall5:.3f} |")
    return "\n".join(lines)


# --- the article relevance floor ----------------------------------------------------------------------------------
ARTICLE_FILE = "articles.json"  # the set's knowledge articles, each naming the queries it answers ("answers")


@dataclass(frozen=True)
class FloorFigures:
    """How articles would be attached over the labelled queries at one relevance floor."""

    floor: float
    attached: int  # articles attached, over all queries
    correct: int  # of them, articles labelled as answering their query
    expected: int  # (query, article) pairs labelled
    none_with_article: int  # queries labelled as having no article that would get one

    @property
    def precision(self) -> float:
        """Return the share of attached articles that answer their query (1.0 when none is attached)."""
        return self.correct / self.attached if self.attached else 1.0

    @property
    def recall(self) -> float:
        """Return the share of labelled (query, article) pairs attached."""
        return self.correct / self.expected if self.expected else 0.0

    @property
    def f1(self) -> float:
        """Return the harmonic mean of precision and recall."""
        total = self.precision + self.recall
        return 2 * self.precision * self.recall / total if total else 0.0


@dataclass
class ArticleCalibration:
    """The scored candidates of every labelled query, the figures per floor and the floor chosen."""

    scored: list[tuple[set[str], list[tuple[str, float]]]]  # per query: its labelled titles, its candidates
    floors: list[FloorFigures]
    best: FloorFigures

    @property
    def queries(self) -> int:
        """Return how many labelled queries were scored."""
        return len(self.scored)

    @property
    def none_queries(self) -> int:
        """Return how many of them are labelled as having no article."""
        return sum(1 for relevant, _ in self.scored if not relevant)

    def at(self, floor: float) -> FloorFigures:
        """Return the figures at a floor (computed from the same candidates)."""
        return _figures(self.scored, floor)


def _figures(scored: list[tuple[set[str], list[tuple[str, float]]]], floor: float) -> FloorFigures:
    attached = correct = expected = none_with = 0
    for relevant, candidates in scored:
        kept = [title for title, score in candidates if score >= floor]
        attached += len(kept)
        correct += len(relevant & set(kept))
        expected += len(relevant)
        none_with += 1 if kept and not relevant else 0
    return FloorFigures(round(floor, 4), attached, correct, expected, none_with)


def article_calibrate(*, directory: Path, limit: int = 3) -> ArticleCalibration:
    """Pick the article floor that maximises F1 of article attachment on the labelled set (ties: the higher floor).

    Run it with `python manage.py retrieval_report --calibrate-articles`; the chosen floor is what
    enhancements/offline.py's ARTICLE_MIN_SCORE ships (tests/test_offline_note.py checks they agree).

    Loads the set's articles into this database inside a transaction that is rolled back, scores every query's
    candidates with article_find_relevant() as the worker does (the `limit` best), and tries every score seen.
    Queries of queries_extra.json expect the articles of the query they are `based_on`.
    """
    from tickets.search import article_find_relevant
    from tickets.services import article_upsert, tenant_create_or_update

    articles = json.loads((directory / ARTICLE_FILE).read_text(encoding="utf-8"))
    answers: dict[str, set[str]] = defaultdict(set)
    for article in articles:
        for query_id in article["answers"]:
            answers[query_id].add(article["title"])
    queries = retrieval_load_queries(directory=directory)
    scored: list[tuple[set[str], list[tuple[str, float]]]] = []
    with transaction.atomic():
        tenants: dict[str, Tenant] = {}
        for slug in sorted({a["tenant"] for a in articles} | {q["tenant"] for q in queries}):
            tenants[slug] = tenant_create_or_update(slug=f"article-eval-{slug}", name=slug.title()).tenant
        for a in articles:
            article_upsert(tenant=tenants[a["tenant"]], title=a["title"], url=a["url"], body=a["body"], tags=a["tags"])
        for query in queries:
            found = article_find_relevant(tenant=tenants[query["tenant"]], text=query["text"], limit=limit)
            relevant = answers.get(query.get("based_on") or query["id"], set())
            scored.append((relevant, [(article.title, score) for article, score in found]))
        transaction.set_rollback(True)
    candidates = sorted({score for _, found in scored for _, score in found} | {0.0})
    floors = [_figures(scored, floor) for floor in candidates]
    best = max(floors, key=lambda f: (round(f.f1, 6), f.floor))
    # The floor itself goes halfway to the next lower score seen: the same figures, with a margin either side.
    below = [score for score in candidates if score < best.floor]
    if below:
        best = _figures(scored, round((below[-1] + best.floor) / 2, 3))
    return ArticleCalibration(scored, floors, best)


def article_render_calibration(*, calibration: ArticleCalibration) -> str:
    """Return the figures at a grid of floors and at the best one, as a Markdown table."""
    grid = sorted({0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, calibration.best.floor})
    lines = [
        f"{calibration.queries} queries, {calibration.none_queries} labelled as having no article.",
        "",
        "| floor | attached | right | precision | recall | F1 | no-article queries given one |",
        "|---|---|---|---|---|---|---|",
    ]
    for floor in grid:
        f = calibration.at(floor)
        mark = " (best)" if floor == calibration.best.floor else ""
        lines.append(
            f"| {floor:.4g}{mark} | {f.attached} | {f.correct} | {f.precision:.3f} | {f.recall:.3f} | {f.f1:.3f}"
            f" | {f.none_with_article} |"
        )
    return "\n".join(lines)
