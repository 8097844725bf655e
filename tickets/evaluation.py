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


def load_queries(directory: Path) -> list[dict[str, Any]]:
    """Return the set's queries, each with its `kind` (original, paraphrased, other_language)."""
    queries = []
    for name in QUERY_FILES:
        path = directory / name
        if path.exists():
            for query in json.loads(path.read_text(encoding="utf-8")):
                queries.append({"kind": "original", **query})
    return queries


def load_history(directory: Path, *, prefix: str = "") -> dict[str, Tenant]:
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


def evaluate(
    tenants: dict[str, Tenant], queries: list[dict[str, Any]], modes: tuple[str, ...] = MODES
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
        tenants = load_history(directory, prefix="retrieval-eval-")
        report = evaluate(tenants, load_queries(directory), modes)
        transaction.set_rollback(True)
    return report


def report_markdown(report: dict[str, dict[str, Figures]], *, vendor: str) -> str:
    """Return the figures as a Markdown table."""
    lines = ["| backend | mode | kind | queries | recall@1 | recall@5 |", "|---|---|---|---|---|---|"]
    for mode, by_kind in report.items():
        for kind in sorted(by_kind, key=lambda k: (k == "all", k)):
            f = by_kind[kind]
            lines.append(f"| {vendor} | {mode} | {kind} | {f.queries} | {f.recall1:.3f} | {f.recall5:.3f} |")
    return "\n".join(lines)
