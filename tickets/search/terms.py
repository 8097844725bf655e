"""Query terms of the lexical search, shared by both backends: which words of a ticket are worth searching for.

The query text is a whole ticket, so it is not searched as written: its informative terms are picked (stop
words and chit-chat dropped, terms too common in the history dropped, the rarest kept, at most MAX_TERMS), and a
candidate must contain two of them, or one that reaches the relevance floor on its own. A score means the same on
either backend: the IDF-weighted share of the query's informative terms that a ticket contains, a match in the
ticket's subject counting fully and one in its description or resolution partly (0..1).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

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
IDENTIFIER_POSTINGS_SHARE = 0.25  # of that budget, for the query's identifiers (identifier_candidates)
MAX_QUERY_WORDS = 200

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

WORD = re.compile(r"[^\W_]+", re.UNICODE)


@dataclass
class Term:
    """One informative query term: how the backend names it, its weight and whether the query's subject has it."""

    key: str
    in_subject: bool
    df: int = 0
    weight: float = 0.0


def split(text: str) -> tuple[str, str]:
    subject, _, body = text.strip().partition("\n")
    return subject, body


def content_words(text: str, cap: int = 0) -> list[str]:
    """Return the distinct words of text worth searching for, in order of appearance, lower-case (at most cap)."""
    words: dict[str, None] = {}
    for word in WORD.findall(text.lower()):
        if word not in STOPWORDS and len(word) > 1 and not (word.isdigit() and len(word) < 3) and len(word) <= 40:
            words[word] = None
            if cap and len(words) >= cap:
                break
    return list(words)


def query_words(text: str) -> tuple[list[str], list[str]]:
    """Return the content words of the query's subject and body, at most MAX_QUERY_WORDS in all.

    A pasted log can hold thousands of distinct words; the first ones say what the ticket is about, and every
    word costs the search a column or a lookup.
    """
    subject, body = split(text)
    subject_words = content_words(subject, MAX_QUERY_WORDS)
    return subject_words, content_words(body, MAX_QUERY_WORDS)[: MAX_QUERY_WORDS - len(subject_words)]


def idf(df: int, total: int) -> float:
    return math.log(1 + (total - df + 0.5) / (df + 0.5))


def select_terms(terms: list[Term], total: int) -> tuple[list[Term], float]:
    """Return the informative terms with their weights (the rarest MAX_TERMS present ones) and the weight sum.

    Words the history never used cannot be matched but still count in the sum, a little: a query about "pizza for
    the lunch order" is not about the one word it shares with a ticket.
    """
    for term in terms:
        term.weight = idf(term.df, total) * (SUBJECT_QUERY_BOOST if term.in_subject else 1.0)
    absent = sum(t.weight for t in terms if t.df == 0)
    kept = [t for t in terms if t.df > 0 and (total < 30 or t.df / total <= MAX_COMMON_SHARE)]
    kept.sort(key=lambda t: (-t.weight, t.key))
    kept = kept[:MAX_TERMS]
    present = sum(t.weight for t in kept)
    # Capped: names, typos and host names in the query are absent too and must not sink every match.
    return kept, present + min(absent, ABSENT_WEIGHT_CAP * present)


def _essential(terms: list[Term], weight_sum: float) -> list[Term]:
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


def candidate_terms(terms: list[Term], weight_sum: float, total: int) -> list[Term]:
    """Return the terms whose postings the index reads: the essential ones, heaviest first, within a budget.

    Reading postings is the cost of a search, so on a large history only as many postings as the budget allows
    are read. The budget goes to the terms that weigh most in a score (rare, and the query's subject counting
    more: it says what the ticket is about), a term that does not fit making way for a lighter one that does;
    spending it on the rarest words first instead reads the postings of whatever rare noise the description
    holds (a typo, a stray build number) and misses the tickets about the subject's problem (recall@5 0.89
    against 0.95 at 1M tickets, docs/benchmarks.md). A ticket sharing nothing but the skipped terms with the
    query is then missed. The heaviest term is always read.
    """
    budget = max(CANDIDATE_POSTINGS, CANDIDATE_SHARE * total)
    chosen: list[Term] = []
    postings = 0
    for term in sorted(_essential(terms, weight_sum), key=lambda t: (-t.weight, t.df, t.key)):
        if not chosen or postings + term.df <= budget:
            chosen.append(term)
            postings += term.df
    return chosen


def identifier_candidates(terms: list[Term], total: int) -> list[Term]:
    """Return the identifier terms whose postings are read besides the query's: the rarest, within a quarter of
    the postings budget (an error code or host name in a few tickets is found even when its weight alone could
    not reach the floor; one in hundreds is common enough to be left to the query's other terms)."""
    budget = max(CANDIDATE_POSTINGS, CANDIDATE_SHARE * total) * IDENTIFIER_POSTINGS_SHARE
    chosen: list[Term] = []
    postings = 0
    for term in sorted(terms, key=lambda t: (t.df, t.key)):
        if postings + term.df > budget:
            break
        chosen.append(term)
        postings += term.df
    return chosen


def min_matched(words: int) -> int:
    """Return how many query terms a ticket must share: one shared word is a coincidence ("coffee machine leaks"
    vs "spilled coffee on laptop") unless the query has only one word to offer."""
    return 1 if words < 2 else 2


# Identifiers (error codes, KB numbers, host and asset names: letters and digits in one token) name the problem
# or the machine exactly: the hybrid search gives the tickets containing them more evidence.
MAX_IDENTIFIERS = 4
_IDENTIFIER = re.compile(r"(?<![\w.-])(?=[\w.-]*\d)(?=[\w.-]*[^\W\d_])[\w][\w.-]{2,60}[\w](?![\w-])", re.UNICODE)


def identifiers_in(text: str) -> list[str]:
    """Return the identifier-like tokens of text (0x80070035, KB5034441, LT-0738, fs01.corp.local), lower-case."""
    found: dict[str, None] = {}
    for token in _IDENTIFIER.findall(text):
        token = token.lower().strip(".-")
        if len(token) >= 4 and not re.fullmatch(r"\d+(st|nd|rd|th|am|pm|gb|mb|kb|tb|px|h|m|s)?", token):
            found[token] = None
    return list(found)[:MAX_IDENTIFIERS]
