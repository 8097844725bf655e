"""Context search: similar resolved tickets, assets mentioned in a text, matching articles.

One interface, two backends chosen by the database vendor: PostgreSQL full-text search over a weighted tsvector
with a GIN index, and SQLite FTS5 kept in sync by triggers (both created in migration 0002). Both score alike, so
a score means the same on either: the IDF-weighted share of the query's informative terms that a ticket contains,
a match in the ticket's subject counting fully and one in its description or resolution partly (0..1).

The query text is a whole ticket, so it is not searched as written: its informative terms are picked (stop
words and chit-chat dropped, terms too common in the history dropped, the rarest kept, at most MAX_TERMS), and a
candidate must contain two of them, or one that reaches the relevance floor on its own. Only candidates are
scored, which keeps a search over a million tickets in milliseconds.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
from django.db import connection
from django.db.models import Q

from tickets import embeddings, semantic
from tickets.models import Asset, KnowledgeArticle, Tenant, Ticket

log = logging.getLogger(__name__)

MIN_SCORE = 0.2  # the relevance floor: below it a ticket is not worth a technician's attention
MAX_TERMS = 12
MAX_COMMON_SHARE = 0.2  # a term in more than this share of the tenant's history says nothing about the problem
SUBJECT_QUERY_BOOST = 1.5  # the query's first line (its subject) says what the ticket is about
BODY_MATCH = 0.6  # a term found only in a ticket's description or resolution
ABSENT_WEIGHT_CAP = 0.0  # share of the present terms' weight added for words the history lacks (0: none)
# How many of the tenant's postings a search may read through the index (at least; CANDIDATE_SHARE of the history
# on large ones): the latency budget. Small histories are searched exhaustively.
CANDIDATE_POSTINGS = 1000
CANDIDATE_SHARE = 0.01
MAX_QUERY_WORDS = 200
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
# Identifiers (error codes, KB numbers, host and asset names: letters and digits in one token) name the problem
# or the machine exactly; a ticket containing the query's identifiers gets up to this much more evidence (in
# proportion to the IDF-weighted share of them it has), even when it shares no other word.
IDENTIFIER_WEIGHT = 0.5
MAX_IDENTIFIERS = 4
IDENTIFIER_MAX_TICKETS = 10  # the best matches of the query's identifiers that get the bonus
_IDENTIFIER = re.compile(r"(?<![\w.-])(?=[\w.-]*\d)(?=[\w.-]*[^\W\d_])[\w][\w.-]{2,60}[\w](?![\w-])", re.UNICODE)
STATS_TTL = 600.0
# Below this many tickets (or before the first ANALYZE), document frequencies are counted exactly.
EXACT_STATS_BELOW = 2_000

# Snowball's English stop words (what PostgreSQL's english configuration drops) plus what users write around a
# problem without saying anything about it.
STOPWORDS = frozenset(
    """i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers
    herself it its itself they them their theirs themselves what which who whom this that these those am is are
    was were be been being have has had having do does did doing a an the and but if or because as until while of
    at by for with about against between into through during before after above below to from up down in out on
    off over under again further then once here there when where why how all any both each few more most other
    some such no nor not only own same so than too very s t can will just don should now
    hi hello hey dear thanks thank thx cheers regards kind best please pls morning afternoon evening today
    yesterday tomorrow week still since ok okay fine try tried trying get gets got getting need needs needed help
    issue issues problem problems someone anyone could would also know like look looks seem seems go going use
    using used im ive dont cant wont doesnt isnt didnt said say asap urgent quick quickly really just again
    sorry appreciate advise let lets anything something everything nothing way thing things one able want wants
    wanted team monday tuesday wednesday thursday friday saturday sunday every""".split()  # noqa: SIM905
)

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"(?<![0-9A-Fa-f:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{0,4}|(?:\d{1,3}\.){3}\d{1,3})")
_HOST = re.compile(
    r"(?<![\w.-])[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


@dataclass
class _Term:
    """One informative query term: how the backend names it, its weight and whether the query's subject has it."""

    key: str
    in_subject: bool
    df: int = 0
    weight: float = 0.0


def _split(text: str) -> tuple[str, str]:
    subject, _, body = text.strip().partition("\n")
    return subject, body


def _content_words(text: str, cap: int = 0) -> list[str]:
    """Return the distinct words of text worth searching for, in order of appearance, lower-case (at most cap)."""
    words: dict[str, None] = {}
    for word in _WORD.findall(text.lower()):
        if word not in STOPWORDS and len(word) > 1 and not (word.isdigit() and len(word) < 3) and len(word) <= 40:
            words[word] = None
            if cap and len(words) >= cap:
                break
    return list(words)


def _query_words(text: str) -> tuple[list[str], list[str]]:
    """Return the content words of the query's subject and body, at most MAX_QUERY_WORDS in all.

    A pasted log can hold thousands of distinct words; the first ones say what the ticket is about, and every
    word costs the search a column or a lookup.
    """
    subject, body = _split(text)
    subject_words = _content_words(subject, MAX_QUERY_WORDS)
    return subject_words, _content_words(body, MAX_QUERY_WORDS)[: MAX_QUERY_WORDS - len(subject_words)]


def _idf(df: int, total: int) -> float:
    return math.log(1 + (total - df + 0.5) / (df + 0.5))


def _select(terms: list[_Term], total: int) -> tuple[list[_Term], float]:
    """Return the informative terms with their weights (the rarest MAX_TERMS present ones) and the weight sum.

    Words the history never used cannot be matched but still count in the sum, a little: a query about "pizza for
    the lunch order" is not about the one word it shares with a ticket.
    """
    for term in terms:
        term.weight = _idf(term.df, total) * (SUBJECT_QUERY_BOOST if term.in_subject else 1.0)
    absent = sum(t.weight for t in terms if t.df == 0)
    kept = [t for t in terms if t.df > 0 and (total < 30 or t.df / total <= MAX_COMMON_SHARE)]
    kept.sort(key=lambda t: (-t.weight, t.key))
    kept = kept[:MAX_TERMS]
    present = sum(t.weight for t in kept)
    # Capped: names, typos and host names in the query are absent too and must not sink every match.
    return kept, present + min(absent, ABSENT_WEIGHT_CAP * present)


def _essential(terms: list[_Term], weight_sum: float) -> list[_Term]:
    """Return the terms a ticket must contain one of to reach the floor (MaxScore pruning).

    The commonest terms together weigh less than the floor, so a ticket that has only those cannot pass it;
    leaving them out of the index lookup skips their long posting lists, while they still count in the score.
    """
    by_weight = sorted(terms, key=lambda t: (t.weight, t.key))
    budget = MIN_SCORE * weight_sum
    skipped = 0.0
    for index, term in enumerate(by_weight):
        if skipped + term.weight >= budget:
            return by_weight[index:]
        skipped += term.weight
    return []


def _candidate_terms(terms: list[_Term], weight_sum: float, total: int) -> list[_Term]:
    """Return the terms whose postings the index reads: the essential ones, rarest first, within a budget.

    Reading postings is the cost of a search, so on a large history the commonest essential terms are left to
    scoring only; a ticket sharing nothing but those with the query is then missed, a ticket that could only
    score low anyway (their weight is low because they are common).
    """
    essential = sorted(_essential(terms, weight_sum), key=lambda t: (t.df, t.key))
    budget = max(CANDIDATE_POSTINGS, CANDIDATE_SHARE * total)
    chosen: list[_Term] = []
    postings = 0
    for term in essential:
        if chosen and postings + term.df > budget:
            break
        chosen.append(term)
        postings += term.df
    return chosen


def _min_matched(words: int) -> int:
    """Return how many query terms a ticket must share: one shared word is a coincidence ("coffee machine leaks"
    vs "spilled coffee on laptop") unless the query has only one word to offer."""
    return 1 if words < 2 else 2


# --- similar tickets: PostgreSQL --------------------------------------------------------------------------------
def _tsquery_literal(lexeme: str, weights: str = "") -> str:
    quoted = "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"
    return f"{quoted}:{weights}" if weights else quoted


_pg_stopped: frozenset[str] | None = None
_pg_stats: dict[str, tuple[float, float, dict[str, float]]] = {}
_pg_sizes: dict[tuple[str, int], tuple[float, int]] = {}


def _pg_lexemes(cursor, text: str) -> list[str]:
    cursor.execute("SELECT array(SELECT lexeme FROM unnest(to_tsvector('english', %s)))", [text])
    return list(cursor.fetchone()[0] or [])


def _pg_query_terms(cursor, text: str) -> list[_Term]:
    """Return the query's lexemes, normalised by PostgreSQL exactly as the documents were."""
    global _pg_stopped
    if _pg_stopped is None:
        _pg_stopped = frozenset(_pg_lexemes(cursor, " ".join(sorted(STOPWORDS))))
    subject_words, body_words = _query_words(text)
    cursor.execute(
        "SELECT array(SELECT lexeme FROM unnest(to_tsvector('english', %s))),"
        " array(SELECT lexeme FROM unnest(to_tsvector('english', %s)))",
        [" ".join(subject_words), " ".join(body_words)],
    )
    in_subject, in_body = cursor.fetchone()
    terms = {lex: _Term(lex, True) for lex in in_subject or [] if lex not in _pg_stopped}
    for lex in in_body or []:
        if lex not in _pg_stopped and lex not in terms:
            terms[lex] = _Term(lex, False)
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


def _pg_count(cursor, tenant_id: int, terms: list[_Term]) -> None:
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


def _pg_similar(
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
        terms, weight_sum = _select(terms, total)
        if not terms:
            return []
        min_matched = 1 if any_term else _min_matched(len(query_terms))
        prefix = f"{tenant.pk}:"
        clauses = [_tsquery_literal(prefix + t.key) for t in _candidate_terms(terms, weight_sum, total)]
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
            min_matched,
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


# --- similar tickets: SQLite FTS5 -------------------------------------------------------------------------------
def _same_stem(a: str, b: str) -> bool:
    prefix = min(len(a), len(b))
    return prefix >= 3 and a[:prefix] == b[:prefix] and abs(len(a) - len(b)) <= 3


def _sqlite_similar(
    tenant: Tenant, text: str, limit: int, exclude_sdp_id: str | None, any_term: bool = False
) -> list[tuple[Ticket, float]]:
    subject_words, body_words = _query_words(text)
    words: dict[str, _Term] = {w: _Term(w, True) for w in subject_words}
    for word in body_words:
        words.setdefault(word, _Term(word, False))
    if not words:
        return []
    # Each word's postings within the tenant: {ticket id: matched in the subject}. bm25() with a single non-zero
    # column weight is non-zero exactly when that column holds the term.
    postings: dict[str, dict[int, bool]] = {}
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM tickets_ticket WHERE tenant_id = %s AND is_resolved", [tenant.pk])
        total = cursor.fetchone()[0]
        seen: dict[frozenset[int], list[_Term]] = {}
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
    min_matched = 1 if any_term else _min_matched(len(words))
    terms, weight_sum = _select(list(words.values()), total)
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
        if score / weight_sum >= MIN_SCORE and matched[ticket_id] >= min_matched
    ]
    if exclude_sdp_id:
        excluded = set(Ticket.objects.filter(tenant=tenant, sdp_id=exclude_sdp_id).values_list("pk", flat=True))
        ranked = [pair for pair in ranked if pair[0] not in excluded]
    resolved = dict(Ticket.objects.filter(pk__in=[pk for pk, _ in ranked]).values_list("pk", "resolved_at"))
    ranked.sort(key=lambda pair: (-pair[1], -(at.timestamp() if (at := resolved.get(pair[0])) else 0), -pair[0]))
    ranked = ranked[:limit]
    tickets = Ticket.objects.filter(tenant=tenant).in_bulk([pk for pk, _ in ranked])
    return [(tickets[pk], score) for pk, score in ranked if pk in tickets]


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


def identifiers_in(text: str) -> list[str]:
    """Return the identifier-like tokens of text (0x80070035, KB5034441, LT-0738, fs01.corp.local), lower-case."""
    found: dict[str, None] = {}
    for token in _IDENTIFIER.findall(text):
        token = token.lower().strip(".-")
        if len(token) >= 4 and not re.fullmatch(r"\d+(st|nd|rd|th|am|pm|gb|mb|kb|tb|px|h|m|s)?", token):
            found[token] = None
    return list(found)[:MAX_IDENTIFIERS]


def _identifier_matches(search, tenant: Tenant, text: str, exclude_sdp_id: str | None) -> dict[int, float]:
    """Return {ticket id: IDF-weighted share of the query's identifiers it contains} (one lexical lookup)."""
    words = {word for identifier in identifiers_in(text) for word in _WORD.findall(identifier) if len(word) > 1}
    if not words:
        return {}
    found = search(tenant, " ".join(sorted(words)), IDENTIFIER_MAX_TICKETS, exclude_sdp_id, any_term=True)
    return {ticket.pk: min(score, 1.0) for ticket, score in found}


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
    search = _pg_similar if connection.vendor == "postgresql" else _sqlite_similar
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
    lexical = search(tenant, text, max(limit, LEXICAL_POOL), exclude_sdp_id) if mode == "hybrid" else []
    lexical_scores = {ticket.pk: min(score, 1.0) for ticket, score in lexical}
    pool = max(limit, SEMANTIC_POOL)
    near = semantic.nearest(tenant, vector, limit=pool + 1, model=model)
    background = min(near.values()) if len(near) > pool else None
    near.update(semantic.cosines(tenant, [pk for pk in lexical_scores if pk not in near], vector, model=model))
    if mode == "semantic":
        scores = {pk: semantic_relevance(cosine, background) for pk, cosine in near.items()}
    else:
        identified = _identifier_matches(search, tenant, text, exclude_sdp_id)
        near.update(semantic.cosines(tenant, [pk for pk in identified if pk not in near], vector, model=model))
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


# --- assets -----------------------------------------------------------------------------------------------------
def ips_in(text: str) -> set[str]:
    """Return the valid IPv4 and IPv6 addresses written in text, normalised."""
    found = set()
    for candidate in [*_IPV4.findall(text), *_IPV6.findall(text)]:
        try:
            found.add(str(ipaddress.ip_address(candidate.strip(":") if candidate.count(":") < 2 else candidate)))
        except ValueError:
            continue
    return found


def _host_tokens(text: str) -> set[str]:
    names = set()
    for match in _HOST.findall(text):
        name = match.lower().rstrip(".")
        if len(name) < 2 or name.replace(".", "").isdigit():
            continue
        names.add(name)
    return names


def asset_find_mentioned(*, tenant: Tenant, text: str) -> list[tuple[Asset, float]]:
    """Return the tenant's assets whose IP or hostname (with or without its domain) appears in text."""
    ips = ips_in(text)
    tokens = _host_tokens(text)
    if not ips and not tokens:
        return []
    # A hostname written with its domain matches a stored short name, and a short name matches a stored FQDN.
    short_names = {t.split(".", 1)[0] for t in tokens if "." in t}
    condition = Q(hostname__in=tokens | short_names)
    if ips:
        condition |= Q(ip__in=ips)
    for token in sorted(t for t in tokens if "." not in t and len(t) >= 3)[:200]:
        condition |= Q(hostname__startswith=f"{token}.")
    found: list[tuple[Asset, float]] = []
    for asset in Asset.objects.filter(condition, tenant=tenant)[:50]:
        exact = bool(asset.ip and asset.ip in ips) or asset.hostname in tokens
        # A match on the name without its domain is almost surely, not certainly, the same host.
        found.append((asset, 1.0 if exact else 0.9))
    found.sort(key=lambda pair: (-pair[1], pair[0].hostname, str(pair[0].ip)))
    return found[:20]


# --- articles ---------------------------------------------------------------------------------------------------
def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _stems(text: str) -> set[str]:
    return {_stem(w) for w in _content_words(text)}


def article_find_relevant(*, tenant: Tenant, text: str, limit: int = 3) -> list[tuple[KnowledgeArticle, float]]:
    """Return up to `limit` of the tenant's articles matching text, best first, scored 0..1."""
    query = _stems(text)
    if not query or limit <= 0:
        return []
    # A tenant has tens to a few thousand articles: scoring them in Python keeps one code path for both backends.
    articles = [
        (article, _stems(f"{article.title} {article.tags}"), _stems(article.body))
        for article in KnowledgeArticle.objects.filter(tenant=tenant).only("id", "title", "tags", "body", "url")
    ]
    if not articles:
        return []
    df: Counter[str] = Counter()
    for _, head, body in articles:
        df.update((head | body) & query)
    ranked_terms = sorted((t for t in query if df[t]), key=lambda t: -_idf(df[t], len(articles)))[:MAX_TERMS]
    weights = {t: _idf(df[t], len(articles)) for t in ranked_terms}
    if not weights:
        return []
    weight_sum = sum(weights.values())
    scored = []
    for article, head, body in articles:
        score = sum(w * (1.0 if t in head else BODY_MATCH) for t, w in weights.items() if t in head or t in body)
        matched = sum(1 for t in weights if t in head or t in body)
        score = min(score / weight_sum, 1.0)
        if score >= MIN_SCORE and matched >= 2:
            scored.append((article, round(score, 4)))
    scored.sort(key=lambda pair: (-pair[1], pair[0].title))
    return scored[:limit]
