"""Which candidates of a similar-ticket search are in another language than the query (hybrid.py scores their
cosines on their own scale, hybrid.CROSS_LOW and CROSS_HIGH, measured for the local model only)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from tickets import embeddings
from tickets.language import text_language
from tickets.models import Tenant, Ticket

TTL_SECONDS = 300.0
_lock = threading.Lock()
_known: dict[tuple[int, str], tuple[frozenset[str], float]] = {}


def _history_languages(tenant: Tenant) -> frozenset[str]:
    """Return the languages recorded on the tenant's resolved tickets, cached per process for TTL_SECONDS.

    Stale for at most that long after a ticket in a new language arrives: that ticket is then scored on the
    same-language scale, the stricter one.
    """
    key = (tenant.pk, tenant.slug)
    now = time.monotonic()
    with _lock:
        found = _known.get(key)
    if found is not None and now - found[1] < TTL_SECONDS:
        return found[0]
    rows = Ticket.objects.filter(tenant=tenant, is_resolved=True).exclude(language="").order_by()
    languages = frozenset(rows.values_list("language", flat=True).distinct())
    with _lock:
        if len(_known) > 10_000:
            _known.clear()
        _known[key] = (languages, now)
    return languages


def history_languages_forget() -> None:
    """Forget every tenant's cached history languages (the next search reads them again)."""
    with _lock:
        _known.clear()


def other_language(*, tenant: Tenant, text: str, ids: Iterable[int], model: str = embeddings.LOCAL_MODEL) -> set[int]:
    """Return the ids (of the tenant's tickets) whose recorded language is known and differs from the text's.

    Empty unless `model` is the local one: its cross-language cosines are the compressed ones the cross-language
    scale was calibrated for; another model's (a multilingual one's) keep the same-language scale, the stricter.
    A query or ticket whose language could not be told is taken to be in the same language (the stricter scale).
    When the tenant's history holds no other language than the query's (the usual case) no ticket is looked up.
    """
    if model != embeddings.LOCAL_MODEL:
        return set()
    wanted = list(dict.fromkeys(ids))
    language = text_language(text) if wanted else ""
    if not language or not (_history_languages(tenant) - {language}):
        return set()
    found = Ticket.objects.filter(tenant=tenant, pk__in=wanted).exclude(language="").exclude(language=language)
    return set(found.values_list("pk", flat=True))
