"""Similar tickets on PostgreSQL: full-text search over a weighted tsvector with a tenant-keyed GIN index.

The index (migration 0002) is on `tickets_search_keys(tenant_id, search_document)`: the document's lexemes
prefixed with the tenant id, so an index lookup reads only the tenant's postings. Only the candidates the index
returns for the query's rarest essential terms (within a postings budget) are scored, which keeps a search over a
million tickets in milliseconds (docs/benchmarks.md, "Search").
"""

from __future__ import annotations

import time
from typing import Any

from django.db import connection

from tickets.models import Tenant, Ticket
from tickets.search.terms import (
    BODY_MATCH,
    MIN_SCORE,
    STOPWORDS,
    WORD,
    Term,
    candidate_terms,
    content_words,
    identifier_candidates,
    identifiers_in,
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


def _pg_query_terms(cursor, text: str, identifier_words: list[str]) -> tuple[list[Term], list[Term]]:
    """Return the query's lexemes and those of its identifiers' words, normalised by PostgreSQL exactly as the
    documents were (one round trip)."""
    global _pg_stopped
    if _pg_stopped is None:
        _pg_stopped = frozenset(_pg_lexemes(cursor, " ".join(sorted(STOPWORDS))))
    subject_words, body_words = query_words(text)
    cursor.execute(
        "SELECT array(SELECT lexeme FROM unnest(to_tsvector('english', %s))),"
        " array(SELECT lexeme FROM unnest(to_tsvector('english', %s))),"
        " array(SELECT lexeme FROM unnest(to_tsvector('english', %s)))",
        [" ".join(subject_words), " ".join(body_words), " ".join(identifier_words)],
    )
    in_subject, in_body, named = cursor.fetchone()
    terms = {lex: Term(lex, True) for lex in in_subject or [] if lex not in _pg_stopped}
    for lex in in_body or []:
        if lex not in _pg_stopped and lex not in terms:
            terms[lex] = Term(lex, False)
    return list(terms.values()), [Term(lex, True) for lex in named or [] if lex not in _pg_stopped]


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


def _frequencies(cursor, tenant_id: int, terms: list[Term]) -> int:
    """Set each term's document frequency within the tenant's history; return the history's size."""
    rows, freqs = _pg_planner_stats(cursor)
    if rows >= EXACT_STATS_BELOW and freqs:
        # Frequencies of common lexemes come from ANALYZE's sample (all tenants); rare ones are counted, which
        # is cheap precisely because they are rare, and drops words the tenant's history never used.
        total = _pg_tenant_size(cursor, tenant_id)
        for term in terms:
            if term.key in freqs:
                term.df = max(1, round(freqs[term.key] * total))
        _pg_count(cursor, tenant_id, [t for t in terms if t.key not in freqs])
        return total
    total = _exact_total(cursor, tenant_id)
    _pg_count(cursor, tenant_id, terms)
    return total


def _exact_total(cursor, tenant_id: int) -> int:
    cursor.execute("SELECT count(*) FROM tickets_ticket WHERE tenant_id = %s AND is_resolved", [tenant_id])
    return cursor.fetchone()[0]


def _score_sql(terms: list[Term], column: dict[str, str], params: list[Any]) -> str:
    """Return the SQL sum of the terms' weights a candidate has (a subject match fully, a body match partly)."""
    for term in terms:
        params += [term.weight, term.weight * BODY_MATCH]
    return " + ".join(f"CASE {column[t.key]} WHEN 2 THEN %s WHEN 1 THEN %s ELSE 0 END" for t in terms)


def _statement(
    cursor, tenant: Tenant, text: str, limit: int, exclude_sdp_id: str | None, any_term: bool, identifiers: int
) -> tuple[str, list[Any]] | None:
    """Return the search statement and its parameters (None when the query has nothing to search for).

    Its rows are (id, score, ident, part): part 0 the best `limit` lexical matches, part 1 the best `identifiers`
    matches of the query's identifiers, `ident` being the IDF-weighted share of them a ticket contains (what a
    lexical search of the identifiers alone would score). Both parts come from one scan of the candidates.
    """
    words = {w for identifier in identifiers_in(text) for w in WORD.findall(identifier) if len(w) > 1}
    terms, named = _pg_query_terms(cursor, text, content_words(" ".join(sorted(words))) if identifiers else [])
    if not terms and not named:
        return None
    # One frequency lookup for both; the identifiers' terms get their own weights (their own search, as it were).
    known = {t.key: t for t in terms}
    total = _frequencies(cursor, tenant.pk, [*terms, *(t for t in named if t.key not in known)])
    for term in named:
        if term.key in known:
            term.df = known[term.key].df
    needed = 1 if any_term else min_matched(len(terms))
    terms, weight_sum = select_terms(terms, total)
    named, named_sum = select_terms(named, total)
    if not terms and not named:
        return None
    prefix = f"{tenant.pk}:"
    # The candidates are the query's, and the tickets containing its rarest identifiers within a small budget of
    # their own (the whole budget again doubled the time of a search at 1M tickets and found no more relevant ones).
    keys = {prefix + t.key for t in candidate_terms(terms, weight_sum, total)}
    keys |= {prefix + t.key for t in identifier_candidates(named, total)}
    if not keys:
        return None
    # Each distinct lexeme is tested once per candidate: 2 in the subject, 1 elsewhere, 0 absent (most are absent,
    # which costs one test).
    lexemes = list(dict.fromkeys(t.key for t in [*terms, *named]))
    column = {key: f"m{index}" for index, key in enumerate(lexemes)}
    flag_params: list[Any] = []
    for key in lexemes:
        flag_params += [_tsquery_literal(key), _tsquery_literal(key, "A")]
    params: list[Any] = []
    flags_sql = ", ".join(
        f"CASE WHEN d @@ %s::tsquery THEN CASE WHEN d @@ %s::tsquery THEN 2 ELSE 1 END ELSE 0 END AS {column[key]}"
        for key in lexemes
    )
    score_sql = f"({_score_sql(terms, column, params)}) / %s" if terms else "0.0"
    params += [weight_sum] if terms else []
    matched_sql = " + ".join(f"({column[t.key]} > 0)::int" for t in terms) or "0"
    ident_sql = f"({_score_sql(named, column, params)}) / %s" if named else "0.0"
    params += [named_sum] if named else []
    exclude_sql = " AND sdp_id <> %s" if exclude_sdp_id else ""
    params += [*flag_params, " | ".join(_tsquery_literal(key) for key in sorted(keys))]
    params += [exclude_sdp_id] if exclude_sdp_id else []
    # The index keys carry the tenant ("<tenant id>:<lexeme>"), so the index reads only this tenant's postings
    # and the predicate alone keeps tenants apart. A plain `tenant_id = ...` here would tempt the planner into
    # AND-ing in a bitmap of every ticket of the tenant, which costs more than the search itself.
    # The document is de-TOASTed once per candidate (the concatenation makes an in-memory copy that the
    # OFFSET 0 fence hands up), not once per term test; the CTE, read twice, is computed once.
    sql = (
        f"WITH scored AS (SELECT id, resolved_at, {score_sql} AS score, {matched_sql} AS matched,"  # noqa: S608
        f" {ident_sql} AS ident FROM (SELECT id, resolved_at, {flags_sql} FROM (SELECT id, resolved_at,"
        " search_document || ''::tsvector AS d FROM tickets_ticket"
        " WHERE is_resolved AND tickets_search_keys(tenant_id, search_document) @@ %s::tsquery"
        f"{exclude_sql} OFFSET 0) AS candidates OFFSET 0) AS flags)"
        " (SELECT id, score, ident, 0 AS part FROM scored WHERE score >= %s AND matched >= %s"
        " ORDER BY score DESC, resolved_at DESC NULLS LAST, id DESC LIMIT %s)"
        " UNION ALL (SELECT id, score, ident, 1 FROM scored WHERE ident >= %s"
        " ORDER BY ident DESC, resolved_at DESC NULLS LAST, id DESC LIMIT %s)"
    )
    params += [MIN_SCORE, needed, limit if terms else 0, MIN_SCORE, identifiers if named else 0]
    return sql, params


def similar(
    tenant: Tenant, text: str, limit: int, exclude_sdp_id: str | None, any_term: bool = False
) -> list[tuple[Ticket, float]]:
    """Return the tenant's `limit` best lexical matches of text as (ticket, score), best first."""
    with connection.cursor() as cursor:
        statement = _statement(cursor, tenant, text, limit, exclude_sdp_id, any_term, 0)
    if statement is None:
        return []
    sql, params = statement
    # The tickets come back in the same round trip (the tenant re-checked on the few rows found).
    columns = ", ".join(f"t.{connection.ops.quote_name(f.column or f.attname)}" for f in Ticket._meta.concrete_fields)
    found = Ticket.objects.raw(
        f"SELECT {columns}, top.score FROM ({sql}) AS top JOIN tickets_ticket AS t ON t.id = top.id"  # noqa: S608
        " WHERE t.tenant_id = %s AND top.part = 0 ORDER BY top.score DESC, t.resolved_at DESC NULLS LAST, t.id DESC",
        [*params, tenant.pk],
    )
    return [(ticket, float(ticket.score)) for ticket in found]  # type: ignore[attr-defined] # a raw() column


def similar_ids(
    tenant: Tenant, text: str, limit: int, exclude_sdp_id: str | None, identifiers: int
) -> tuple[list[tuple[int, float]], dict[int, float]]:
    """Return the best lexical matches [(id, score)] and {id: identifier share} of those of them and of the best
    `identifiers` matches of the query's identifiers that contain them, in one statement (no row is loaded)."""
    with connection.cursor() as cursor:
        statement = _statement(cursor, tenant, text, limit, exclude_sdp_id, False, identifiers)
        if statement is None:
            return [], {}
        cursor.execute(statement[0], statement[1])
        rows = cursor.fetchall()
    lexical = [(pk, float(score)) for pk, score, _, part in rows if part == 0]
    # A lexical match containing the identifiers counts them as well as the best identifier-only matches do.
    return lexical, {pk: min(float(ident), 1.0) for pk, _, ident, _ in rows if ident >= MIN_SCORE}


def similar_ids_with_vectors(
    tenant: Tenant, text: str, limit: int, exclude_sdp_id: str | None, identifiers: int, model: str
) -> tuple[list[tuple[int, float]], dict[int, float], dict[int, bytes], dict[int, tuple]]:
    """Return similar_ids()'s two results, {id: vector} of those tickets embedded by model and {id: row} of them
    all (row_ticket() makes it a Ticket), in one statement (for the hybrid search that finds the semantic
    candidates at the same time, hybrid.py: the tickets it returns that the lexical search found need no second
    fetch)."""
    with connection.cursor() as cursor:
        statement = _statement(cursor, tenant, text, limit, exclude_sdp_id, False, identifiers)
        if statement is None:
            return [], {}, {}, {}
        sql, params = statement
        # The rows found, by key (their pages were just read by the scan), the tenant re-checked.
        cursor.execute(
            f"SELECT top.id, top.score, top.ident, top.part, {_COLUMNS} FROM ({sql}) AS top"  # noqa: S608
            " JOIN tickets_ticket AS t ON t.id = top.id AND t.tenant_id = %s",
            [*params, tenant.pk],
        )
        rows = cursor.fetchall()
    lexical = [(row[0], float(row[1])) for row in rows if row[3] == 0]
    identified = {row[0]: min(float(row[2]), 1.0) for row in rows if row[2] >= MIN_SCORE}
    blobs = {row[0]: bytes(row[_EMBEDDING]) for row in rows if row[_EMBEDDING] is not None and row[_MODEL] == model}
    return lexical, identified, blobs, {row[0]: row[4:] for row in rows}


_FIELDS = Ticket._meta.concrete_fields
_COLUMNS = ", ".join(f't."{f.column}"' for f in _FIELDS)
_EMBEDDING = 4 + [f.attname for f in _FIELDS].index("embedding")
_MODEL = 4 + [f.attname for f in _FIELDS].index("embedding_model")


def row_ticket(values: tuple) -> Ticket:
    """Return the Ticket of a row similar_ids_with_vectors returned, its values converted as the ORM does (built
    only for the tickets the search returns)."""
    converted = []
    for field, value in zip(_FIELDS, values, strict=True):
        for converter in field.get_db_converters(connection):
            value = converter(value, field.get_col(Ticket._meta.db_table), connection)
        converted.append(value)
    return Ticket.from_db(connection.alias, [f.attname for f in _FIELDS], converted)
