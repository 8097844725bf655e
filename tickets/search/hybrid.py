"""Hybrid similar-ticket search: lexical and semantic candidates of the tenant fused into one 0..1 score.

The lexical backends (postgres.py, sqlite.py) score alike; the semantic candidates are the tenant's nearest
embeddings (semantic.py); identifier matches (error codes, KB numbers, host names) add evidence so that an exact
identifier still wins. `fused_score` is computed the same way on every database.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from django.db import DEFAULT_DB_ALIAS, close_old_connections, connection, connections
from django.db.backends.base.base import BaseDatabaseWrapper

from tickets import embeddings
from tickets.models import Tenant, Ticket
from tickets.search import languages, postgres, semantic, sqlite
from tickets.search.terms import MIN_SCORE

log = logging.getLogger(__name__)

# Hybrid search, calibrated on tests/fixtures/retrieval (a grid over these three, `manage.py retrieval_report`
# for the figures): a cosine at or below SEMANTIC_LOW says nothing, one at SEMANTIC_HIGH or above is full semantic
# evidence, which counts SEMANTIC_WEIGHT: a ticket sharing the query's rare terms (an error code, a host name, a
# KB number) outranks one that is only about the same thing. The unrelated texts of the set stay below the floor.
MODES = ("hybrid", "lexical", "semantic")
LEXICAL_POOL = 20
SEMANTIC_POOL = 20
SEMANTIC_LOW = 0.30
SEMANTIC_HIGH = 0.75
SEMANTIC_WEIGHT = 0.8
SEMANTIC_FLOOR = MIN_SCORE
# Between a query and a ticket in different languages (both detected) the local model's cosines are compressed
# (a relevant ticket's about 0.31 against 0.73 within English, the 21st nearest 0.15 against 0.26), so they have
# their own scale, about half as wide: calibrated on the set's other-language queries against its unrelated
# texts in those languages (`python -m bench.semantic_quality --calibrate`; one grid step above the lowest
# CROSS_LOW at which none of them gets a result, for a margin; docs/benchmarks.md). For the local model only:
# another (a multilingual OpenAI-compatible one) keeps the same-language scale (languages.other_language).
CROSS_LOW = 0.25
CROSS_HIGH = 0.50
# Identifiers (terms.identifiers_in) name the problem or the machine exactly; a ticket containing the query's
# identifiers gets up to this much more evidence (in proportion to the IDF-weighted share of them it has), even
# when it shares no other word.
IDENTIFIER_WEIGHT = 0.5
IDENTIFIER_MAX_TICKETS = 10  # the best matches of the query's identifiers that get the bonus
# On PostgreSQL, outside a transaction, the hybrid search embeds the query and runs the semantic statement on a
# helper thread (its own database connection, kept and reused like a request's: CONN_MAX_AGE) while the caller's
# connection runs the lexical one, so their latencies overlap instead of adding up (docs/benchmarks.md, "Search
# at scale"). At most OVERLAP_THREADS helpers, and as many extra connections, per process (docs/capacity.md).
# Inside a transaction (an atomic block, every test's) a second connection would not see its uncommitted rows,
# so the two run one after the other on the caller's connection; on SQLite too (the embedded default, small
# histories, one writer: nothing to gain), and when OVERLAP_THREADS is 0 (bench/search_overlap.py compares).
OVERLAP_THREADS = 4
_helpers: ThreadPoolExecutor | None = None
_helpers_pid = 0
_helpers_lock = threading.Lock()
_helper_connections: list[BaseDatabaseWrapper] = []  # the helpers' connection wrappers, closed by helpers_shutdown()


def _query_vector(text: str) -> np.ndarray | None:
    """Return the query's embedding, or None when embeddings are off or the provider failed (lexical only)."""
    if not embeddings.current_model():
        return None
    try:
        return embeddings.text_embed([text])[0]
    except embeddings.EmbeddingError as exc:
        log.warning("query embedding failed, searching lexically only: %s", exc)
        return None


def _helper_pool() -> ThreadPoolExecutor:
    """Return this process's helper threads (new ones after a fork: the parent's threads are not in the child)."""
    global _helpers, _helpers_pid
    with _helpers_lock:
        if _helpers is None or _helpers_pid != os.getpid():
            _helpers = ThreadPoolExecutor(max_workers=OVERLAP_THREADS, thread_name_prefix="search-semantic")
            _helpers_pid = os.getpid()
        return _helpers


def helpers_shutdown() -> None:
    """Stop this process's helper threads and close their database connections (the test suite does after each
    test, so that no connection outlives its test database; a new search starts new helpers)."""
    global _helpers
    with _helpers_lock:
        pool, _helpers = _helpers, None
        if pool is not None:
            pool.shutdown(wait=True)
        for wrapper in _helper_connections:
            if wrapper.connection is not None:  # its thread has ended: nothing else uses it
                wrapper.connection.close()
                wrapper.connection = None
        _helper_connections.clear()


def _near_on_helper(tenant: Tenant, vector: np.ndarray, limit: int, model: str) -> dict[int, float]:
    """Return {id: cosine} of the `limit` nearest tickets to vector, on a helper thread."""
    close_old_connections()  # the helper's connection, like a request's: dropped when unusable or past CONN_MAX_AGE
    wrapper = connections[DEFAULT_DB_ALIAS]
    if not any(known is wrapper for known in _helper_connections):
        _helper_connections.append(wrapper)
    try:
        return semantic.candidates(tenant, vector, limit=limit, model=model)[0]
    finally:
        close_old_connections()


def semantic_relevance(cosine: float, background: float | None = None, *, cross: bool = False) -> float:
    """Return the 0..1 relevance of a cosine similarity: 0 at SEMANTIC_LOW (or at the background, when higher) and
    below, rising by 1 / (SEMANTIC_HIGH - SEMANTIC_LOW) per unit of cosine (CROSS_LOW and CROSS_HIGH when the
    query and the ticket are in different languages).

    The background is the cosine of the query's SEMANTIC_POOL-th nearest ticket: in a large history written in one
    vocabulary every ticket is somewhat near, and only those clearly nearer than that say the same thing.
    """
    base, high = (CROSS_LOW, CROSS_HIGH) if cross else (SEMANTIC_LOW, SEMANTIC_HIGH)
    low = base if background is None else max(base, background)
    return min(1.0, max(0.0, (cosine - low) / (high - base)))


def fused_score(lexical: float, cosine: float | None, background: float | None = None, *, cross: bool = False) -> float:
    """Return the hybrid score: how likely the ticket is relevant given either kind of evidence (0..1).

    A probabilistic OR, 1 - (1 - lexical)(1 - semantic): strong evidence of either kind carries a ticket (a shared
    error code or host name, or the same problem in other words), and both together rank above either alone. A
    ticket without an embedding keeps its lexical score. The parts are computed alike on every database.
    """
    if cosine is None:
        return lexical
    return 1.0 - (1.0 - lexical) * (1.0 - SEMANTIC_WEIGHT * semantic_relevance(cosine, background, cross=cross))


def ticket_search_similar(
    *, tenant: Tenant, text: str, limit: int = 5, exclude_sdp_id: str | None = None, mode: str = "hybrid"
) -> list[tuple[Ticket, float]]:
    """Return up to `limit` resolved tickets of the tenant most similar to text, best first, scored 0..1.

    mode: "hybrid" (lexical and semantic candidates fused; the default), "lexical" or "semantic".
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if limit <= 0 or not text.strip():
        return []
    search = postgres.similar if connection.vendor == "postgresql" else sqlite.similar
    model = embeddings.current_model()
    pool = max(limit, SEMANTIC_POOL)
    overlapped = mode == "hybrid" and bool(model) and connection.vendor == "postgresql" and OVERLAP_THREADS > 0
    vector = None if mode == "lexical" or not model else _query_vector(text)
    if vector is not None and overlapped and not connection.in_atomic_block:
        # The semantic statement on a helper's connection while the lexical one runs on ours; the vectors of the
        # lexical candidates come with them.
        future = _helper_pool().submit(_near_on_helper, tenant, vector, pool + 1, model)
        lexical, identified, blobs = postgres.similar_ids_with_vectors(
            tenant, text, max(limit, LEXICAL_POOL), exclude_sdp_id, IDENTIFIER_MAX_TICKETS, model
        )
        others = semantic.cosines(blobs, vector)
        near = future.result()
        cross = languages.other_language(tenant=tenant, text=text, ids=[*near, *others], model=model)
        return _fused(tenant, limit, exclude_sdp_id, mode, pool, lexical, identified, near, others, cross)
    if vector is None:
        if mode == "semantic":
            return []
        # A ticket with neither subject nor description (an import's or a minimal event's, its SDP fetch pending
        # or failed) says nothing a technician can compare: it is never offered as history.
        return [
            (ticket, round(min(score, 1.0), 4))
            for ticket, score in search(tenant, text, limit, exclude_sdp_id)
            if ticket.is_complete
        ]
    backend = postgres if connection.vendor == "postgresql" else sqlite
    # The lexical matches and those of the query's identifiers in one statement (ids and scores only: no row is
    # loaded before the final top `limit`), then the semantic candidates with the vectors of all of them in one more.
    lexical, identified = (
        backend.similar_ids(tenant, text, max(limit, LEXICAL_POOL), exclude_sdp_id, IDENTIFIER_MAX_TICKETS)
        if mode == "hybrid"
        else ([], {})
    )
    also = [*dict.fromkeys(pk for pk, _ in lexical), *identified]
    near, others = semantic.candidates(tenant, vector, limit=pool + 1, model=model, also=also)
    cross = languages.other_language(tenant=tenant, text=text, ids=[*near, *others], model=model)
    return _fused(tenant, limit, exclude_sdp_id, mode, pool, lexical, identified, near, others, cross)


def _fused(
    tenant: Tenant,
    limit: int,
    exclude_sdp_id: str | None,
    mode: str,
    pool: int,
    lexical: list[tuple[int, float]],
    identified: dict[int, float],
    near: dict[int, float],
    others: dict[int, float],
    cross: set[int],
) -> list[tuple[Ticket, float]]:
    """Return the best `limit` tickets by fused score, given the candidates' lexical, identifier and semantic
    evidence ({id: cosine} of the `pool` + 1 nearest, and of the others; `cross`: those in another language)."""
    lexical_scores = {pk: min(score, 1.0) for pk, score in lexical}
    background = min(near.values()) if len(near) > pool else None
    near.update(others)
    if mode == "semantic":
        scores = {pk: semantic_relevance(cosine, background, cross=pk in cross) for pk, cosine in near.items()}
    else:
        scores = {}
        for pk in {*lexical_scores, *near, *identified}:
            score = fused_score(lexical_scores.get(pk, 0.0), near.get(pk), background, cross=pk in cross)
            if pk in identified:
                score = 1.0 - (1.0 - score) * (1.0 - IDENTIFIER_WEIGHT * identified[pk])
            scores[pk] = score
    floor = MIN_SCORE if mode == "hybrid" else SEMANTIC_FLOOR
    ranked = sorted(((pk, s) for pk, s in scores.items() if s >= floor), key=lambda pair: (-pair[1], -pair[0]))
    tickets = Ticket.objects.filter(tenant=tenant).in_bulk([pk for pk, _ in ranked[: limit + 1]])
    found = [
        (tickets[pk], round(min(score, 1.0), 4))
        for pk, score in ranked[: limit + 1]
        if pk in tickets and tickets[pk].sdp_id != exclude_sdp_id and tickets[pk].is_complete
    ]
    found.sort(
        key=lambda pair: (-pair[1], -(pair[0].resolved_at.timestamp() if pair[0].resolved_at else 0), -pair[0].pk)
    )
    return found[:limit]
