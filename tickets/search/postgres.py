"""Similar tickets on PostgreSQL: full-text search over a weighted tsvector with a tenant-keyed GIN index.

The index (migration 0002) is on `tickets_search_keys(tenant_id, search_document)`: the document's lexemes
prefixed with the tenant id, so an index lookup reads only the tenant's postings. Only the candidates the index
returns for the query's rarest essential terms (within a postings budget) are scored, which keeps a search over a
million tickets in milliseconds (docs/benchmarks.md, "Search").
"""

from __future__ import annotations

import time

from django.db import connection

from tickets.models import Tenant, Ticket
from tickets.search.terms import (
    BODY_MATCH,
    MIN_SCORE,
    STOPWORDS,
    Term,
    candidate_terms,
    min_matched,
    query_words,
    select_terms,
)

STATS_TTL = 600.0
# Below this many tickets (or before the first ANALYZE), document frequencies are counted exactly.
EXACT_STATS_BELOW = 2_000


def _tsquery_literal(lexeme: str, weights: str = "") -> str:
    quoted = "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"
    return f"{quoted}:{weights}" if weights else quoted


_pg_stopped: frozenset[str] | None = None
_pg_stats: dict[str, tuple[float, float, dict[str, float]]] = {}
_pg_sizes: dict[tuple[str, int], tuple[float, int]] = {}


def _pg_lexemes(cursor, text: str) -> list[str]:
    cursor.execute("SELECT array(SELECT lexeme FROM unnest(to_tsvector('english', %s)))", [text])
    return list(cursor.fetchone()[0] or [])


def _pg_query_terms(cursor, text: str) -> list[Term]:
    """Return the query's lexemes, normalised by PostgreSQL exactly as the documents were."""
    global _pg_stopped
    if _pg_stopped is None:
        _pg_stopped = frozenset(_pg_lexemes(cursor, " ".join(sorted(STOPWORDS))))
    subject_words, body_words = query_words(text)
    cursor.execute(
        "SELECT array(SELECT lexeme FROM unnest(to_tsvector('english', %s))),"
        " array(SELECT lexeme FROM unnest(to_tsvector('english', %s)))",
        [" ".join(subject_words), " ".join(body_words)],
    )
    in_subject, in_body = cursor.fetchone()
    terms = {lex: Term(lex, True) for lex in in_subject or [] if lex not in _pg_stopped}
    for lex in in_body or []:
        if lex not in _pg_stopped and lex not in terms:
            terms[lex] = Term(lex, False)
    return list(terms.values())


def _pg_planner_stats(cursor) -> tuple[float, dict[str, float]]:
    """Return (table rows, lexeme frequencies) from the planner statistics, cached for a while."""
    key = connection.settings_dict["NAME"]
    cached = _pg_stats.get(key)
    if cached and cached[0] > time.monotonic():
        return cached[1], cached[2]
    cursor.execute(
        "SELECT c.reltuples, s.most_common_elems::text::text[], s.most_common_elem_freqs"
        " FROM pg_class c LEFT JOIN pg_stats s ON s.tablename = c.relname AND s.attname = 'search_document'"
        " WHERE c.relname = 'tickets_ticket' AND c.relkind = 'r'"
    )
    rows, elems, freqs = cursor.fetchone() or (0, None, None)
    table = dict(zip(elems or [], freqs or [], strict=False))
    _pg_stats[key] = (time.monotonic() + STATS_TTL, float(rows or 0), table)
    return float(rows or 0), table


def _pg_tenant_size(cursor, tenant_id: int) -> int:
    key = (connection.settings_dict["NAME"], tenant_id)
    cached = _pg_sizes.get(key)
    if cached and cached[0] > time.monotonic():
        return cached[1]
    cursor.execute("SELECT count(*) FROM tickets_ticket WHERE tenant_id = %s AND is_resolved", [tenant_id])
    size = cursor.fetchone()[0]
    _pg_sizes[key] = (time.monotonic() + STATS_TTL, size)
    return size


def _pg_count(cursor, tenant_id: int, terms: list[Term]) -> None:
    """Set each term's exact document frequency within the tenant's history."""
    if not terms:
        return
    counts = ", ".join("count(*) FILTER (WHERE d @@ %s::tsquery)" for _ in terms)
    cursor.execute(
        f"SELECT {counts} FROM (SELECT search_document || ''::tsvector AS d FROM tickets_ticket"  # noqa: S608
        " WHERE is_resolved AND tickets_search_keys(tenant_id, search_document) @@ %s::tsquery OFFSET 0) AS matches",
        [
            *(_tsquery_literal(t.key) for t in terms),
            " | ".join(_tsquery_literal(f"{tenant_id}:{t.key}") for t in terms),
        ],
    )
    for term, df in zip(terms, cursor.fetchone(), strict=True):
        term.df = df


def similar(
    tenant: Tenant, text: str, limit: int, exclude_sdp_id: str | None, any_term: bool = False
) -> list[tuple[Ticket, float]]:
    with connection.cursor() as cursor:
        terms = _pg_query_terms(cursor, text)
        if not terms:
            return []
        rows, freqs = _pg_planner_stats(cursor)
        if rows >= EXACT_STATS_BELOW and freqs:
            # Frequencies of common lexemes come from ANALYZE's sample (all tenants); rare ones are counted, which
            # is cheap precisely because they are rare, and drops words the tenant's history never used.
            total = _pg_tenant_size(cursor, tenant.pk)
            for term in terms:
                if term.key in freqs:
                    term.df = max(1, round(freqs[term.key] * total))
            _pg_count(cursor, tenant.pk, [t for t in terms if t.key not in freqs])
        else:
            cursor.execute("SELECT count(*) FROM tickets_ticket WHERE tenant_id = %s AND is_resolved", [tenant.pk])
            total = cursor.fetchone()[0]
            _pg_count(cursor, tenant.pk, terms)
        query_terms = terms
        terms, weight_sum = select_terms(terms, total)
        if not terms:
            return []
        needed = 1 if any_term else min_matched(len(query_terms))
        prefix = f"{tenant.pk}:"
        clauses = [_tsquery_literal(prefix + t.key) for t in candidate_terms(terms, weight_sum, total)]
        score_sql = " + ".join(
            "CASE WHEN d @@ %s::tsquery THEN %s WHEN d @@ %s::tsquery THEN %s ELSE 0 END" for _ in terms
        )
        matched_sql = " + ".join("(d @@ %s::tsquery)::int" for _ in terms)
        score_params: list[object] = []
        for term in terms:
            score_params += [
                _tsquery_literal(term.key, "A"),
                term.weight,
                _tsquery_literal(term.key),
                term.weight * BODY_MATCH,
            ]
        exclude_sql = " AND sdp_id <> %s" if exclude_sdp_id else ""
        # The index keys carry the tenant ("<tenant id>:<lexeme>"), so the index reads only this tenant's postings
        # and the predicate alone keeps tenants apart. A plain `tenant_id = ...` here would tempt the planner into
        # AND-ing in a bitmap of every ticket of the tenant, which costs more than the search itself.
        # The document is de-TOASTed once per candidate (the concatenation makes an in-memory copy that the
        # OFFSET 0 fence hands up), not once per term test.
        sql = (
            f"SELECT id, score FROM (SELECT id, resolved_at, ({score_sql}) / %s AS score,"  # noqa: S608
            f" {matched_sql} AS matched FROM ("
            "SELECT id, resolved_at, search_document || ''::tsvector AS d FROM tickets_ticket"
            " WHERE is_resolved AND tickets_search_keys(tenant_id, search_document) @@ %s::tsquery"
            f"{exclude_sql} OFFSET 0) AS candidates) AS scored WHERE score >= %s AND matched >= %s"
            " ORDER BY score DESC, resolved_at DESC NULLS LAST, id DESC LIMIT %s"
        )
        params = [
            *score_params,
            weight_sum,
            *(_tsquery_literal(t.key) for t in terms),
            " | ".join(clauses),
            *([exclude_sdp_id] if exclude_sdp_id else []),
            MIN_SCORE,
            needed,
            limit,
        ]
    # The tickets come back in the same round trip (the tenant re-checked on the few rows found).
    columns = ", ".join(f"t.{connection.ops.quote_name(f.column or f.attname)}" for f in Ticket._meta.concrete_fields)
    found = Ticket.objects.raw(
        f"SELECT {columns}, top.score FROM ({sql}) AS top JOIN tickets_ticket AS t ON t.id = top.id"  # noqa: S608
        " WHERE t.tenant_id = %s ORDER BY top.score DESC, t.resolved_at DESC NULLS LAST, t.id DESC",
        [*params, tenant.pk],
    )
    return [(ticket, float(ticket.score)) for ticket in found]  # type: ignore[attr-defined] # a raw() column
