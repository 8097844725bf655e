"""Semantic candidates for the similar-ticket search: the tenant's resolved tickets nearest to a query vector.

Extension-free on both databases, and bounded: the candidates come from the tenant's SCAN_ROWS most recently
resolved tickets (all of them in a history of up to that size), so the cost of a search does not grow with the
history. On PostgreSQL their sign-bit codes are ranked by Hamming distance (`bit_count(code # query)` over an
index-only scan of a covering index in recency order that holds the int8 vectors too) and the nearest PREFILTER
are re-scored with those vectors, returned by the same statement as the vectors of the tickets the lexical search
found; on SQLite (the embedded default, histories of thousands) every vector of the window is scored. Older
tickets still reach the results through the lexical and identifier matches, which cover the whole history, and
are then scored semantically too.

pgvector is not used: Debian 12's PostgreSQL 15 (this project's CI) has no package for it, so the extension-free
path is the one every deployment has and the one tested here (docs/benchmarks.md, "Search").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from django.db import connection

from tickets.models import Tenant, Ticket

PREFILTER = 200  # codes kept by the Hamming scan for float re-scoring
SCAN_ROWS = 10_000  # the most recently resolved tickets of a tenant whose codes a search scans
_FIXED = float(2**32)  # rows_cosine's fixed point
_CHUNK = 2048


def _rows(sql: str, params: Sequence[Any]) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def rows_cosine(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """Return the cosine of each stored int8 vector (a row of matrix) with the query vector, exactly the same
    whichever rows are scored together (the window cache and this module's statements agree to the last bit).

    The query is rounded to multiples of 2**-32 (an error under 1e-10 per component), so every product and
    partial sum is an integer number of 2**-32 below 2**53 (up to 4096 dimensions), which float64 holds exactly:
    the result does not depend on the order BLAS sums in, which changes with the number of rows (a float32
    product differed in the last bit between 200 and 201 rows, enough to swap two tickets of the same text).
    """
    if not len(matrix):
        return np.zeros(0, dtype=np.float64)
    query = np.rint(np.asarray(vector, dtype=np.float64) * _FIXED)
    out = np.empty(len(matrix), dtype=np.float64)
    for start in range(0, len(matrix), _CHUNK):  # bounded temporaries for a large SQLite window
        out[start : start + _CHUNK] = matrix[start : start + _CHUNK].astype(np.float64) @ query
    return out / (127.0 * _FIXED)


def _score(rows: list[tuple], vector: np.ndarray) -> dict[int, float]:
    dim = vector.shape[0]
    rows = [(pk, bytes(blob)) for pk, blob in rows if blob is not None and len(blob) == dim]
    if not rows:
        return {}
    matrix = np.frombuffer(b"".join(blob for _, blob in rows), dtype=np.int8).reshape(len(rows), dim)
    cosines = rows_cosine(matrix, vector)
    return {pk: float(c) for (pk, _), c in zip(rows, cosines, strict=True)}


def cosines(blobs: dict[int, bytes], vector: np.ndarray) -> dict[int, float]:
    """Return {id: cosine with vector} of the given stored vectors (those of another dimension left out)."""
    return _score(list(blobs.items()), vector)


def _bits(vector: np.ndarray) -> str:
    return "".join("1" if value > 0 else "0" for value in vector)


def _pg_rows(tenant: Tenant, vector: np.ndarray, model: str, prefilter: int, also: list[int]) -> list[tuple]:
    """Return (id, vector, is a prefilter candidate) for the nearest codes of the window and for `also`."""
    table = Ticket._meta.db_table
    # One round trip: the window in recency order with its codes and vectors (an index-only scan of migration
    # 0011's covering index), its nearest codes, and the vectors of the lexical candidates outside them by key.
    return _rows(
        f"WITH recent AS (SELECT id, embedding_code, embedding FROM {table} WHERE tenant_id = %s"  # noqa: S608
        " AND embedding_model = %s AND is_resolved AND embedding_code IS NOT NULL"
        " ORDER BY resolved_at DESC NULLS LAST, id DESC LIMIT %s),"
        " near AS (SELECT id, embedding FROM recent ORDER BY bit_count(embedding_code # %s::varbit), id LIMIT %s)"
        " SELECT id, embedding, true FROM near UNION ALL"
        f" SELECT t.id, t.embedding, false FROM {table} AS t WHERE t.id = ANY(%s::bigint[])"
        " AND t.id NOT IN (SELECT id FROM near) AND t.tenant_id = %s AND t.embedding_model = %s AND t.is_resolved",
        [tenant.pk, model, SCAN_ROWS, _bits(vector), prefilter, also, tenant.pk, model],
    )


def _sqlite_rows(tenant: Tenant, model: str, also: list[int]) -> list[tuple]:
    table = Ticket._meta.db_table
    window = _rows(
        f"SELECT id, embedding, 1 FROM {table} WHERE tenant_id = %s AND embedding_model = %s"  # noqa: S608
        " AND is_resolved AND embedding IS NOT NULL ORDER BY resolved_at IS NULL, resolved_at DESC, id DESC LIMIT %s",
        [tenant.pk, model, SCAN_ROWS],
    )
    seen = {row[0] for row in window}
    missing = [pk for pk in also if pk not in seen]
    if not missing:
        return window
    found = Ticket.objects.filter(tenant=tenant, pk__in=missing, embedding_model=model, is_resolved=True)
    return window + [(pk, blob, 0) for pk, blob in found.values_list("pk", "embedding")]


def vectors_of(tenant: Tenant, model: str, ids: Sequence[int]) -> dict[int, bytes]:
    """Return {id: stored vector} of those of the given tickets that are the tenant's, resolved and embedded by
    model (the lexical candidates, from the whole history)."""
    if not ids:
        return {}
    found = Ticket.objects.filter(tenant=tenant, pk__in=list(ids), embedding_model=model, is_resolved=True)
    return {pk: bytes(blob) for pk, blob in found.values_list("pk", "embedding") if blob is not None}


def candidates(
    tenant: Tenant, vector: np.ndarray, *, limit: int, model: str, also: Sequence[int] = ()
) -> tuple[dict[int, float], dict[int, float]]:
    """Return ({id: cosine} of the `limit` nearest tickets, {id: cosine} of those of `also` embedded by model).

    Both among the tenant's resolved tickets embedded by model; the nearest come from the SCAN_ROWS most recently
    resolved ones, `also` (the lexical candidates) from the whole history.
    """
    also = list(dict.fromkeys(also))
    if connection.vendor == "postgresql":
        rows = _pg_rows(tenant, vector, model, max(PREFILTER, limit), also)
    else:
        rows = _sqlite_rows(tenant, model, also)
    scored = _score([(pk, blob) for pk, blob, _ in rows], vector)
    pool = {pk for pk, _, near in rows if near}
    nearest = sorted(((pk, c) for pk, c in scored.items() if pk in pool), key=lambda pair: (-pair[1], -pair[0]))
    wanted = set(also)
    return dict(nearest[:limit]), {pk: c for pk, c in scored.items() if pk in wanted}
