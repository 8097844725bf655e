"""Similar tickets on SQLite (the embedded default): FTS5 kept in sync by triggers (migration 0002).

Each query word's postings within the tenant are read from FTS5 and scored in Python exactly as PostgreSQL scores
them (tickets/search/terms.py), so a score means the same on either database.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from django.db import connection

from tickets.models import Tenant, Ticket
from tickets.search.terms import (
    BODY_MATCH,
    MIN_SCORE,
    WORD,
    Term,
    identifiers_in,
    min_matched,
    query_words,
    select_terms,
)


def _same_stem(a: str, b: str) -> bool:
    prefix = min(len(a), len(b))
    return prefix >= 3 and a[:prefix] == b[:prefix] and abs(len(a) - len(b)) <= 3


def _ranked(
    tenant: Tenant, text: str, limit: int, exclude_sdp_id: str | None, any_term: bool
) -> list[tuple[int, float]]:
    """Return the tenant's `limit` best lexical matches of text as (ticket id, score), best first."""
    subject_words, body_words = query_words(text)
    words: dict[str, Term] = {w: Term(w, True) for w in subject_words}
    for word in body_words:
        words.setdefault(word, Term(word, False))
    if not words:
        return []
    # Each word's postings within the tenant: {ticket id: matched in the subject}. bm25() with a single non-zero
    # column weight is non-zero exactly when that column holds the term.
    postings: dict[str, dict[int, bool]] = {}
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM tickets_ticket WHERE tenant_id = %s AND is_resolved", [tenant.pk])
        total = cursor.fetchone()[0]
        seen: dict[frozenset[int], list[Term]] = {}
        for word, term in list(words.items()):
            cursor.execute(
                "SELECT f.rowid, bm25(tickets_ticket_fts, 1.0, 0.0, 0.0) FROM tickets_ticket_fts AS f"
                " JOIN tickets_ticket AS t ON t.id = f.rowid"
                " WHERE tickets_ticket_fts MATCH %s AND t.tenant_id = %s AND t.is_resolved",
                ['"' + word.replace('"', '""') + '"', tenant.pk],
            )
            rows = {row[0]: row[1] < 0 for row in cursor.fetchall()}
            ids = frozenset(rows)
            # Two words with identical postings and a common stem are one term (printer / printers): count it once.
            same = next((t for t in seen.get(ids, []) if ids and _same_stem(t.key, word)), None)
            if same is not None:
                same.in_subject = same.in_subject or term.in_subject
                del words[word]
                continue
            seen.setdefault(ids, []).append(term)
            term.df = len(rows)
            postings[word] = rows
    needed = 1 if any_term else min_matched(len(words))
    terms, weight_sum = select_terms(list(words.values()), total)
    if not terms:
        return []
    scores: defaultdict[int, float] = defaultdict(float)
    matched: Counter[int] = Counter()
    for term in terms:
        for ticket_id, in_subject in postings[term.key].items():
            scores[ticket_id] += term.weight * (1.0 if in_subject else BODY_MATCH)
            matched[ticket_id] += 1
    ranked = [
        (ticket_id, score / weight_sum)
        for ticket_id, score in scores.items()
        if score / weight_sum >= MIN_SCORE and matched[ticket_id] >= needed
    ]
    if exclude_sdp_id:
        excluded = set(Ticket.objects.filter(tenant=tenant, sdp_id=exclude_sdp_id).values_list("pk", flat=True))
        ranked = [pair for pair in ranked if pair[0] not in excluded]
    resolved = dict(Ticket.objects.filter(pk__in=[pk for pk, _ in ranked]).values_list("pk", "resolved_at"))
    ranked.sort(key=lambda pair: (-pair[1], -(at.timestamp() if (at := resolved.get(pair[0])) else 0), -pair[0]))
    return ranked[:limit]


def similar(
    tenant: Tenant, text: str, limit: int, exclude_sdp_id: str | None, any_term: bool = False
) -> list[tuple[Ticket, float]]:
    """Return the tenant's `limit` best lexical matches of text as (ticket, score), best first."""
    ranked = _ranked(tenant, text, limit, exclude_sdp_id, any_term)
    tickets = Ticket.objects.filter(tenant=tenant).in_bulk([pk for pk, _ in ranked])
    return [(tickets[pk], score) for pk, score in ranked if pk in tickets]


def similar_ids(
    tenant: Tenant, text: str, limit: int, exclude_sdp_id: str | None, identifiers: int
) -> tuple[list[tuple[int, float]], dict[int, float]]:
    """Return the best lexical matches [(id, score)] and {id: identifier share} of those of them and of the best
    `identifiers` matches of the query's identifiers that contain them (a lexical search of their words, any one
    of which may match)."""
    lexical = _ranked(tenant, text, limit, exclude_sdp_id, False)
    words = {w for identifier in identifiers_in(text) for w in WORD.findall(identifier) if len(w) > 1}
    if not words or not identifiers:
        return lexical, {}
    found = _ranked(tenant, " ".join(sorted(words)), 10**9, exclude_sdp_id, True)
    # A lexical match containing the identifiers counts them as well as the best identifier-only matches do.
    ids = {pk for pk, _ in lexical}
    return lexical, {pk: min(score, 1.0) for index, (pk, score) in enumerate(found) if index < identifiers or pk in ids}
