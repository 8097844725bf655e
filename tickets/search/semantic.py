"""Semantic candidates for the similar-ticket search: the tenant's resolved tickets nearest to a query vector.

Extension-free on both databases. On PostgreSQL the tenant's sign-bit codes are ranked by Hamming distance
(`bit_count(code # query)`, an index-only scan of a covering index) and the nearest PREFILTER are re-scored with
their int8 vectors; elsewhere (SQLite, the embedded default, histories of thousands) every vector of the tenant is
scored. Where the server has pgvector, the same contract could be served by an HNSW index; the extension-free path
is what every deployment has, so it is the one shipped and tested here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from django.db import connection

from tickets import embeddings
from tickets.models import Tenant, Ticket

PREFILTER = 200  # codes kept by the Hamming scan for float re-scoring


def _rows(sql: str, params: Sequence[Any]) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _score(rows: list[tuple], vector: np.ndarray) -> dict[int, float]:
    rows = [(pk, blob) for pk, blob in rows if blob is not None and len(blob) == vector.shape[0]]
    if not rows:
        return {}
    matrix = embeddings.vectors_unpack([blob for _, blob in rows], vector.shape[0])
    cosines = matrix @ vector
    return {pk: float(c) for (pk, _), c in zip(rows, cosines, strict=True)}


def _bits(vector: np.ndarray) -> str:
    return "".join("1" if value > 0 else "0" for value in vector)


def nearest(tenant: Tenant, vector: np.ndarray, *, limit: int, model: str) -> dict[int, float]:
    """Return {ticket id: cosine} of the tenant's resolved tickets (embedded by model) nearest to vector."""
    table = Ticket._meta.db_table
    if connection.vendor == "postgresql":
        ids = [
            row[0]
            for row in _rows(
                f"SELECT id FROM {table} WHERE tenant_id = %s AND embedding_model = %s AND is_resolved"  # noqa: S608
                " AND embedding_code IS NOT NULL ORDER BY bit_count(embedding_code # %s::varbit), id LIMIT %s",
                [tenant.pk, model, _bits(vector), max(PREFILTER, limit)],
            )
        ]
        scored = cosines(tenant, ids, vector, model=model)
    else:
        scored = _score(
            _rows(
                f"SELECT id, embedding FROM {table} WHERE tenant_id = %s AND embedding_model = %s"  # noqa: S608
                " AND is_resolved AND embedding IS NOT NULL",
                [tenant.pk, model],
            ),
            vector,
        )
    best = sorted(scored.items(), key=lambda pair: (-pair[1], -pair[0]))[:limit]
    return dict(best)


def cosines(tenant: Tenant, ids: list[int], vector: np.ndarray, *, model: str) -> dict[int, float]:
    """Return {ticket id: cosine} for those of ids that are the tenant's tickets embedded by model."""
    if not ids:
        return {}
    found = Ticket.objects.filter(tenant=tenant, pk__in=ids, embedding_model=model).values_list("pk", "embedding")
    return _score(list(found), vector)
