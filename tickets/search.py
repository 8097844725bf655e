"""Context search: similar resolved tickets, assets mentioned in a text, matching articles.

One interface for every backend; callers never build queries themselves.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter

from django.db.models import Q

from tickets.models import Asset, KnowledgeArticle, Tenant, Ticket

STOPWORDS = frozenset(
    [
        "a",
        "about",
        "after",
        "again",
        "all",
        "also",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "been",
        "before",
        "being",
        "but",
        "by",
        "can",
        "cannot",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "him",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "just",
        "me",
        "more",
        "most",
        "my",
        "no",
        "nor",
        "not",
        "now",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "out",
        "over",
        "own",
        "same",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
        "hi",
        "hello",
        "thanks",
        "thank",
        "please",
        "team",
        "regards",
        "since",
        "today",
        "still",
        "getting",
        "get",
        "got",
        "cant",
        "dont",
        "doesnt",
        "isnt",
        "wont",
    ]
)
MIN_SCORE = 0.15
_WORD = re.compile(r"[a-z0-9][a-z0-9._-]*[a-z0-9]|[a-z0-9]")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"(?<![0-9A-Fa-f:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![0-9A-Fa-f:])")
_HOST = re.compile(r"\b[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9-]{1,63})*\b")


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def terms(text: str) -> list[str]:
    """Return the stemmed, stopword-free terms of text."""
    return [_stem(w) for w in _WORD.findall(text.lower()) if w not in STOPWORDS and len(w) > 1]


def similar_tickets(
    tenant: Tenant, text: str, *, limit: int = 5, exclude_sdp_id: str | None = None
) -> list[tuple[Ticket, float]]:
    """Return up to `limit` resolved tickets of the tenant most similar to text, best first."""
    query = Counter(terms(text))
    if not query:
        return []
    candidates = Ticket.objects.filter(tenant=tenant, is_resolved=True)
    if exclude_sdp_id:
        candidates = candidates.exclude(sdp_id=exclude_sdp_id)
    docs = [(t, Counter(terms(f"{t.subject} {t.subject} {t.description} {t.resolution}"))) for t in candidates]
    if not docs:
        return []
    df: Counter[str] = Counter()
    for _, doc in docs:
        df.update(set(doc) & set(query))
    n = len(docs)
    idf = {term: math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5)) for term in query}
    best = sum(idf.values()) or 1.0
    scored = []
    for ticket, doc in docs:
        score = sum(idf[term] for term in query if term in doc) / best
        if score >= MIN_SCORE:
            scored.append((ticket, round(score, 4)))
    scored.sort(key=lambda pair: (-pair[1], pair[0].pk))
    return scored[:limit]


def _ips(text: str) -> set[str]:
    found = set()
    for candidate in [*_IPV4.findall(text), *_IPV6.findall(text)]:
        try:
            found.add(str(ipaddress.ip_address(candidate)))
        except ValueError:
            continue
    return found


def _hostnames(text: str) -> set[str]:
    names = set()
    for match in _HOST.findall(text):
        name = match.lower().rstrip(".")
        if any(c.isalpha() for c in name) and ("-" in name or "." in name or any(c.isdigit() for c in name)):
            names.add(name)
            names.add(name.split(".")[0])
    return names


def find_assets(tenant: Tenant, text: str) -> list[tuple[Asset, float]]:
    """Return the tenant's assets whose IP or hostname (with or without domain) appears in text."""
    ips = _ips(text)
    hosts = _hostnames(text)
    if not ips and not hosts:
        return []
    host_q = Q()
    for host in hosts:
        host_q |= Q(hostname__iexact=host) | Q(hostname__istartswith=f"{host}.")
    assets = (
        Asset.objects.filter(Q(tenant=tenant) & (Q(ip__in=ips) | host_q))
        if ips
        else Asset.objects.filter(Q(tenant=tenant) & host_q)
    )
    return [(asset, 1.0) for asset in assets[:20]]


def find_articles(tenant: Tenant, text: str, *, limit: int = 3) -> list[tuple[KnowledgeArticle, float]]:
    """Return up to `limit` of the tenant's articles matching text, best first."""
    query = set(terms(text))
    if not query:
        return []
    scored = []
    for article in KnowledgeArticle.objects.filter(tenant=tenant):
        doc = set(terms(f"{article.title} {article.title} {article.tags} {article.body}"))
        score = len(query & doc) / len(query)
        if score >= MIN_SCORE:
            scored.append((article, round(score, 4)))
    scored.sort(key=lambda pair: (-pair[1], pair[0].pk))
    return scored[:limit]
