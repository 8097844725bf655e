"""Hybrid similar-ticket search: lexical and semantic candidates of the tenant fused into one 0..1 score.

The lexical backends (postgres.py, sqlite.py) score alike; the semantic candidates are the tenant's nearest
embeddings (semantic.py); identifier matches (error codes, KB numbers, host names) add evidence so that an exact
identifier still wins. `fused_score` is computed the same way on every database.
"""

from __future__ import annotations

import logging

import numpy as np
from django.db import connection

from tickets import embeddings
from tickets.models import Tenant, Ticket
from tickets.search import postgres, semantic, sqlite
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
# Identifiers (terms.identifiers_in) name the problem or the machine exactly; a ticket containing the query's
# identifiers gets up to this much more evidence (in proportion to the IDF-weighted share of them it has), even
# when it shares no other word.
IDENTIFIER_WEIGHT = 0.5
IDENTIFIER_MAX_TICKETS = 10  # the best matches of the query's identifiers that get the bonus


def _query_vector(text: str) -> np.ndarray | None:
    """Return the query's embedding, or None when embeddings are off or the provider failed (lexical only)."""
    if not embeddings.current_model():
        return None
    try:
        return embeddings.text_embed([text])[0]
    except embeddings.EmbeddingError as exc:
        log.warning("query embedding failed, searching lexically only: %s", exc)
        return None


def semantic_relevance(cosine: float, background: float | None = None) -> float:
    """Return the 0..1 relevance of a cosine similarity: 0 at SEMANTIC_LOW (or at the background, when higher) and
    below, rising by 1 / (SEMANTIC_HIGH - SEMANTIC_LOW) per unit of cosine.

    The background is the cosine of the query's SEMANTIC_POOL-th nearest ticket: in a large history written in one
    vocabulary every ticket is somewhat near, and only those clearly nearer than that say the same thing.
    """
    low = SEMANTIC_LOW if background is None else max(SEMANTIC_LOW, background)
    return min(1.0, max(0.0, (cosine - low) / (SEMANTIC_HIGH - SEMANTIC_LOW)))


def fused_score(lexical: float, cosine: float | None, background: float | None = None) -> float:
    """Return the hybrid score: how likely the ticket is relevant given either kind of evidence (0..1).

    A probabilistic OR, 1 - (1 - lexical)(1 - semantic): strong evidence of either kind carries a ticket (a shared
    error code or host name, or the same problem in other words), and both together rank above either alone. A
    ticket without an embedding keeps its lexical score. The parts are computed alike on every database.
    """
    if cosine is None:
        return lexical
    return 1.0 - (1.0 - lexical) * (1.0 - SEMANTIC_WEIGHT * semantic_relevance(cosine, background))


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
    # A ticket with neither subject nor description (an import's or a minimal event's, its SDP fetch pending
    # or failed) says nothing a technician can compare: it is never offered as history.
    vector = None if mode == "lexical" else _query_vector(text)
    if vector is None:
        if mode == "semantic":
            return []
        return [
            (ticket, round(min(score, 1.0), 4))
            for ticket, score in search(tenant, text, limit, exclude_sdp_id)
            if ticket.is_complete
        ]
    model = embeddings.current_model()
    backend = postgres if connection.vendor == "postgresql" else sqlite
    # The lexical matches and those of the query's identifiers in one statement (ids and scores only: no row is
    # loaded before the final top `limit`), then the semantic candidates with the vectors of all of them in one more.
    lexical, identified = (
        backend.similar_ids(tenant, text, max(limit, LEXICAL_POOL), exclude_sdp_id, IDENTIFIER_MAX_TICKETS)
        if mode == "hybrid"
        else ([], {})
    )
    lexical_scores = {pk: min(score, 1.0) for pk, score in lexical}
    pool = max(limit, SEMANTIC_POOL)
    near, others = semantic.candidates(tenant, vector, limit=pool + 1, model=model, also=[*lexical_scores, *identified])
    background = min(near.values()) if len(near) > pool else None
    near.update(others)
    if mode == "semantic":
        scores = {pk: semantic_relevance(cosine, background) for pk, cosine in near.items()}
    else:
        scores = {}
        for pk in {*lexical_scores, *near, *identified}:
            score = fused_score(lexical_scores.get(pk, 0.0), near.get(pk), background)
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
