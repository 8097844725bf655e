"""Which candidates of a similar-ticket search are in another language than the query (hybrid.py scores their
cosines on their own scale: hybrid.CROSS_LOW, CROSS_HIGH)."""

from __future__ import annotations

from collections.abc import Iterable

from tickets.language import text_language
from tickets.models import Tenant, Ticket


def other_language(*, tenant: Tenant, text: str, ids: Iterable[int]) -> set[int]:
    """Return the ids (of the tenant's tickets) whose recorded language is known and differs from the text's.

    A query or ticket whose language could not be told is taken to be in the same language (the stricter scale).
    """
    wanted = list(dict.fromkeys(ids))
    language = text_language(text) if wanted else ""
    if not language:
        return set()
    found = Ticket.objects.filter(tenant=tenant, pk__in=wanted).exclude(language="").exclude(language=language)
    return set(found.values_list("pk", flat=True))
