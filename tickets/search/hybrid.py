"""Hybrid similar-ticket search: lexical and semantic candidates of the tenant fused into one 0..1 score.

The lexical backends (postgres.py, sqlite.py) score alike; the semantic candidates are the tenant's nearest
embeddings (semantic.py); identifier matches (error codes, KB numbers, host names) add evidence so that an exact
identifier still wins. `fused_score` is computed the same way on every database.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import numpy as np
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, close_old_connections, connection, connections

from tickets import embeddings
from tickets.models import Tenant, Ticket
from tickets.search import languages, postgres, semantic, sqlite, window
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
# On PostgreSQL, outside a transaction, the hybrid search hands the query's embedding and its semantic
# neighbours to a helper thread (its own database connection, kept like a request's: CONN_MAX_AGE) while the
# caller's connection runs the lexical statement, so the two overlap instead of adding up (docs/benchmarks.md,
# "Search at scale"). The neighbours come from the tenant's window held in the process (window.py: a short
# incremental read, then numpy) or, without it, from the semantic statement. At most OVERLAP_THREADS helpers, and
# as many extra connections, per process (docs/capacity.md). Inside a transaction (an atomic block, every test's)
# a second connection would not see its uncommitted rows, so everything runs one step after the other on the
# caller's connection and without the window cache (the statement path); on SQLite (the embedded default, small
# histories, one writer) and when OVERLAP_THREADS is 0 one after the other too, with the cache
# (bench/search_overlap.py compares).
OVERLAP_THREADS = 4
# How long the caller waits for its helper's semantic part before it answers with the lexical results alone (as when
# the query's embedding fails), logging a warning: HELPER_DB_WAIT for the helper's reads (1 ms to 60 ms measured:
# docs/benchmarks.md), plus, with a remote embeddings provider, its request timeout (EMBEDDINGS_TIMEOUT, else
# LLM_TIMEOUT); the local model is loaded on the caller's thread first. Two orders of magnitude above the slowest
# read: a helper past it is stuck (a lock), not slow; the server ends its statement at twice the wait (_bounded).
HELPER_DB_WAIT = 5.0


class _Helpers:
    """Daemon threads running jobs from one queue, each on its own connection, closed past CONN_MAX_AGE when idle."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.idle = threading.Semaphore(0)
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Return the future of fn(*args), run on a helper thread (a new one while all are busy, up to size)."""
        future: Future = Future()
        with self.lock:
            if not self.idle.acquire(blocking=False) and len(self.threads) < self.size:
                thread = threading.Thread(target=self._run, name=f"search-semantic-{len(self.threads)}", daemon=True)
                self.threads.append(thread)
                thread.start()
        self.jobs.put((future, fn, args))
        return future

    def _run(self) -> None:
        configured: Any = None  # the driver connection this thread set its statement timeout on
        while True:
            wrapper = connections[DEFAULT_DB_ALIAS]
            open_until = wrapper.close_at if wrapper.connection is not None else None
            try:
                job = self.jobs.get(timeout=None if open_until is None else max(0.0, open_until - time.monotonic()))
            except queue.Empty:
                close_old_connections()  # idle past CONN_MAX_AGE (or unusable): closed on its own thread
                continue
            if job is None:
                break
            future, fn, args = job
            if future.set_running_or_notify_cancel():
                close_old_connections()  # dropped when unusable or past CONN_MAX_AGE, like a request's
                try:
                    configured = _bounded(wrapper, configured)
                    future.set_result(fn(*args))
                except BaseException as exc:  # handed to the caller, which re-raises it
                    future.set_exception(exc)
                finally:
                    close_old_connections()
            self.idle.release()
        connections.close_all()

    def shutdown(self) -> None:
        """Stop the threads once their jobs are done; each closes its connection."""
        for _ in self.threads:
            self.jobs.put(None)
        for thread in self.threads:
            thread.join()


def _bounded(wrapper: Any, configured: Any) -> Any:
    """Set a statement timeout of twice HELPER_DB_WAIT on a new helper connection; return the one it is set on."""
    if wrapper.vendor == "postgresql":
        wrapper.ensure_connection()
        if wrapper.connection is not configured:
            with wrapper.cursor() as cursor:
                cursor.execute("SELECT set_config('statement_timeout', %s, false)", [f"{int(2000 * HELPER_DB_WAIT)}ms"])
    return wrapper.connection


_helpers: _Helpers | None = None
_helpers_lock = threading.Lock()


def _forget_helpers_after_fork() -> None:
    """In a forked child (qcluster's workers) no helper thread exists, and the parent's connections are the
    parent's (closing one from the child would end its session): start afresh."""
    global _helpers, _helpers_lock
    _helpers, _helpers_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_helpers_after_fork)


def _helper_pool() -> _Helpers:
    """Return this process's helper threads."""
    global _helpers
    with _helpers_lock:
        if _helpers is None:
            _helpers = _Helpers(OVERLAP_THREADS)
        return _helpers


def helpers_shutdown() -> None:
    """Stop this process's helper threads, which close their database connections, and drop the semantic windows
    held (the test suite does after each test, so that nothing outlives its test database)."""
    global _helpers
    with _helpers_lock:
        pool, _helpers = _helpers, None
    if pool is not None:
        pool.shutdown()
    window.cache_clear()


def _query_vector(text: str) -> np.ndarray | None:
    """Return the query's embedding, or None when embeddings are off or the provider failed (lexical only)."""
    if not embeddings.current_model():
        return None
    try:
        return embeddings.text_embed([text])[0]
    except embeddings.EmbeddingError as exc:
        log.warning("query embedding failed, searching lexically only: %s", exc)
        return None


Semantic = tuple[np.ndarray | None, dict[int, float], dict[int, bytes]]


def _semantic(tenant: Tenant, text: str, model: str, limit: int, cached: bool, helper: bool = False) -> Semantic:
    """Return (the query's vector, {id: cosine} of its `limit` nearest tickets of the window, {id: stored vector}
    of those when they came from the window cache), on this thread's connection (a helper's: the window's full
    re-read may go to another helper)."""
    vector = _query_vector(text)
    if vector is None:
        return None, {}, {}
    later = _helper_pool().submit if helper else None
    dim = vector.shape[0]
    held = window.window_get(tenant_id=tenant.pk, model=model, dim=dim, later=later) if cached else None
    if held is not None:
        near, kept = window.nearest(held, vector, limit)
        return vector, near, kept
    return vector, semantic.candidates(tenant, vector, limit=limit, model=model)[0], {}


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
    model = embeddings.current_model()
    found = _searched(tenant, text, limit, exclude_sdp_id, mode, model, bool(model) and window.enabled())
    if found is None:
        # A neighbour from the window cache is no longer what the database holds (reopened, re-embedded,
        # deleted since the window was read): the window is read again and this search done without it.
        window.forget(tenant_id=tenant.pk, model=model)
        found = _searched(tenant, text, limit, exclude_sdp_id, mode, model, False)
    return found or []


def _helper_wait() -> float:
    """Return how many seconds the caller waits for its helper's semantic part (HELPER_DB_WAIT)."""
    if settings.EMBEDDINGS_PROVIDER != "openai":
        return HELPER_DB_WAIT
    return HELPER_DB_WAIT + float(settings.EMBEDDINGS_TIMEOUT or settings.LLM_TIMEOUT)


def _helper_result(future: Future, tenant: Tenant) -> Semantic:
    """Return the helper's semantic part, or no vector (lexical results only) when it is not done in time."""
    wait = _helper_wait()
    try:
        return future.result(timeout=wait)
    except FutureTimeout:
        future.cancel()  # not started yet (every helper busy): it never runs
        log.warning(
            "the semantic part of a search of tenant %s took over %.1f s on its helper thread (stuck connection?):"
            " answering with the lexical results only",
            tenant.pk,
            wait,
        )
        return None, {}, {}


def _lexical_only(tenant: Tenant, text: str, limit: int, exclude_sdp_id: str | None) -> list[tuple[Ticket, float]]:
    search = postgres.similar if connection.vendor == "postgresql" else sqlite.similar
    # A ticket with neither subject nor description (an import's or a minimal event's, its SDP fetch pending or
    # failed) says nothing a technician can compare: it is never offered as history.
    return [
        (ticket, round(min(score, 1.0), 4))
        for ticket, score in search(tenant, text, limit, exclude_sdp_id)
        if ticket.is_complete
    ]


def _searched(
    tenant: Tenant, text: str, limit: int, exclude_sdp_id: str | None, mode: str, model: str, cached: bool
) -> list[tuple[Ticket, float]] | None:
    """Return the search's results, or None when a neighbour the window cache gave turned out stale."""
    if mode == "lexical" or not model:
        return [] if mode == "semantic" else _lexical_only(tenant, text, limit, exclude_sdp_id)
    pool = max(limit, SEMANTIC_POOL)
    lexical_limit = max(limit, LEXICAL_POOL)
    postgresql = connection.vendor == "postgresql"
    lexical: list[tuple[int, float]] = []
    identified: dict[int, float] = {}
    rows: dict[int, tuple] = {}  # tickets the lexical statement returned whole (postgres.row_ticket)
    blobs: dict[int, bytes] = {}
    if mode == "hybrid" and postgresql and OVERLAP_THREADS > 0 and not connection.in_atomic_block:
        # The semantic side on a helper's connection while the lexical statement runs on ours; the vectors of
        # the lexical candidates come with them.
        embeddings.provider()  # the local model loaded here (seconds, once per process), not within the wait
        future = _helper_pool().submit(_semantic, tenant, text, model, pool + 1, cached, True)
        lexical, identified, blobs, rows = postgres.similar_ids_with_vectors(
            tenant, text, lexical_limit, exclude_sdp_id, IDENTIFIER_MAX_TICKETS, model
        )
        vector, near, kept = _helper_result(future, tenant)
        if vector is None:
            return _lexical_only(tenant, text, limit, exclude_sdp_id)
        others = semantic.cosines(blobs, vector)
    elif cached:
        vector, near, kept = _semantic(tenant, text, model, pool + 1, True)
        if vector is None:
            return [] if mode == "semantic" else _lexical_only(tenant, text, limit, exclude_sdp_id)
        if mode == "hybrid" and postgresql:
            lexical, identified, blobs, rows = postgres.similar_ids_with_vectors(
                tenant, text, lexical_limit, exclude_sdp_id, IDENTIFIER_MAX_TICKETS, model
            )
        elif mode == "hybrid":
            lexical, identified = sqlite.similar_ids(
                tenant, text, lexical_limit, exclude_sdp_id, IDENTIFIER_MAX_TICKETS
            )
            blobs = semantic.vectors_of(tenant, model, [*dict.fromkeys(pk for pk, _ in lexical), *identified])
        others = semantic.cosines(blobs, vector)
    else:
        vector = _query_vector(text)
        if vector is None:
            return [] if mode == "semantic" else _lexical_only(tenant, text, limit, exclude_sdp_id)
        backend = postgres if postgresql else sqlite
        # The lexical matches and those of the query's identifiers in one statement (ids and scores only: no row
        # is loaded before the final top `limit`), then the semantic candidates with the vectors of all of them.
        if mode == "hybrid":
            lexical, identified = backend.similar_ids(
                tenant, text, lexical_limit, exclude_sdp_id, IDENTIFIER_MAX_TICKETS
            )
        also = [*dict.fromkeys(pk for pk, _ in lexical), *identified]
        near, others = semantic.candidates(tenant, vector, limit=pool + 1, model=model, also=also)
        kept = {}
    cross = languages.other_language(tenant=tenant, text=text, ids=[*near, *others], model=model)
    evidence = (lexical, identified, near, others, cross, kept, rows)
    return _fused(tenant, limit, exclude_sdp_id, mode, pool, model, *evidence)


def _fused(
    tenant: Tenant,
    limit: int,
    exclude_sdp_id: str | None,
    mode: str,
    pool: int,
    model: str,
    lexical: list[tuple[int, float]],
    identified: dict[int, float],
    near: dict[int, float],
    others: dict[int, float],
    cross: set[int],
    kept: dict[int, bytes],
    rows: dict[int, tuple],
) -> list[tuple[Ticket, float]] | None:
    """Return the best `limit` tickets by fused score, given the candidates' lexical, identifier and semantic
    evidence ({id: cosine} of the `pool` + 1 nearest, and of the others; `cross`: those in another language) and
    those already loaded (`rows`);
    None when one of the nearest that came from the window cache (`kept`: {id: the vector it was scored with})
    differs from its row."""
    lexical_scores = {pk: min(score, 1.0) for pk, score in lexical}
    background = min(near.values()) if len(near) > pool else None
    near = {**near, **others}
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
    top = ranked[: limit + 1]
    tickets = {pk: postgres.row_ticket(rows[pk]) for pk, _ in top if pk in rows}
    if len(tickets) < len(top):  # only the semantic candidates the lexical statement did not return
        tickets.update(Ticket.objects.filter(tenant=tenant).in_bulk([pk for pk, _ in top if pk not in rows]))
    for pk, _ in top:
        if pk in kept and pk not in others and not _as_held(tickets.get(pk), model, kept[pk]):
            return None
    found = [
        (tickets[pk], round(min(score, 1.0), 4))
        for pk, score in top
        if pk in tickets and tickets[pk].sdp_id != exclude_sdp_id and tickets[pk].is_complete
    ]
    found.sort(
        key=lambda pair: (-pair[1], -(pair[0].resolved_at.timestamp() if pair[0].resolved_at else 0), -pair[0].pk)
    )
    return found[:limit]


def _as_held(ticket: Ticket | None, model: str, vector: bytes) -> bool:
    """Return whether the row is still the window cache's entry: resolved, embedded by model, the same vector."""
    return (
        ticket is not None
        and ticket.is_resolved
        and ticket.embedding_model == model
        and ticket.embedding is not None
        and bytes(ticket.embedding) == vector
    )
