"""Context beside the similar tickets: the assets a text mentions and the knowledge articles matching it."""

from __future__ import annotations

import ipaddress
import re
from collections import Counter

from django.db.models import Q

from tickets.models import Asset, KnowledgeArticle, Tenant
from tickets.search.terms import BODY_MATCH, MAX_TERMS, MIN_SCORE, content_words, idf

_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"(?<![0-9A-Fa-f:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{0,4}|(?:\d{1,3}\.){3}\d{1,3})")
_HOST = re.compile(
    r"(?<![\w.-])[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


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
    return {_stem(w) for w in content_words(text)}


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
    ranked_terms = sorted((t for t in query if df[t]), key=lambda t: -idf(df[t], len(articles)))[:MAX_TERMS]
    weights = {t: idf(df[t], len(articles)) for t in ranked_terms}
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
