"""Language and embedding of tickets: computed in the import, the worker and the sweep, never in the webhook."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from django.db.models import Q
from django.utils import timezone

from tickets import embeddings
from tickets.language import text_language, texts_language
from tickets.models import Tenant, Ticket

log = logging.getLogger(__name__)

EMBEDDING_FIELDS = ["embedding", "embedding_code", "embedding_model", "embedding_dim"]
CLEARED: dict[str, Any] = {"embedding": None, "embedding_code": None, "embedding_model": "", "embedding_dim": None}


def _text(ticket: Ticket) -> str:
    return embeddings.ticket_embedding_text(ticket.subject, ticket.description)


def ticket_bulk_enrich(*, tickets: Sequence[Ticket]) -> list[str]:
    """Set language and embedding on tickets about to be written (not saved); return the fields set.

    When the embedding provider fails, the embedding is cleared instead (the sweep embeds the ticket later) and
    the write goes on: an import is never lost to an embeddings outage.
    """
    texts = [_text(ticket) for ticket in tickets]
    for ticket, language in zip(tickets, texts_language(texts), strict=True):
        ticket.language = language
    if not embeddings.current_model() or not tickets:
        return ["language"]
    try:
        embedded = embeddings.embed_texts(texts)
    except embeddings.EmbeddingError as exc:
        log.warning("embedding %d tickets failed, left for the sweep: %s", len(tickets), exc)
        embedded = []
    for index, ticket in enumerate(tickets):
        values = embedded[index].fields() if embedded else CLEARED
        for key, value in values.items():
            setattr(ticket, key, value)
    return ["language", *EMBEDDING_FIELDS]


def _pending(tenant: Tenant | None) -> Any:
    """Return the resolved tickets whose embedding is missing or from another model than the configured one."""
    model = embeddings.current_model()
    rows = Ticket.objects.filter(is_resolved=True).filter(Q(embedding__isnull=True) | ~Q(embedding_model=model))
    return rows.filter(tenant=tenant) if tenant is not None else rows


def ticket_embed_pending_count(*, tenant: Tenant | None = None) -> int:
    """Return how many resolved tickets (of the tenant, or all) need embedding with the configured model."""
    if not embeddings.current_model():
        return 0
    return _pending(tenant).count()


def ticket_embed_pending(
    *,
    tenant: Tenant | None = None,
    limit: int | None = None,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Embed (and detect the language of) resolved tickets that lack the configured model's embedding.

    Returns how many were embedded. Resumable and idempotent: each batch is committed on its own and only tickets
    still pending are picked, so an interrupted run continues where it stopped and a second run does nothing.
    Raises EmbeddingError when the provider fails (what was committed stays).
    """
    if not embeddings.current_model():
        return 0
    done = 0
    last_id = 0
    while limit is None or done < limit:
        size = batch_size if limit is None else min(batch_size, limit - done)
        batch = list(
            _pending(tenant)
            .filter(pk__gt=last_id)
            .order_by("pk")
            .only("pk", "subject", "description", "language", "embedding_model")[:size]
        )
        if not batch:
            break
        last_id = batch[-1].pk
        embedded = embeddings.embed_texts([_text(t) for t in batch])
        now = timezone.now()  # stamped as the batch is written: the search's window reads rows by updated_at
        for ticket, item in zip(batch, embedded, strict=True):
            ticket.language = ticket.language or text_language(_text(ticket))
            for key, value in item.fields().items():
                setattr(ticket, key, value)
            ticket.updated_at = now
        Ticket.objects.bulk_update(batch, ["language", *EMBEDDING_FIELDS, "updated_at"], batch_size=batch_size)
        done += len(batch)
        if progress is not None:
            progress(len(batch))
    return done


def ticket_index(*, ticket: Ticket) -> Ticket:
    """Detect the ticket's language and embed it when missing or stale, saving what changed; return the ticket.

    An embeddings failure leaves the ticket without an embedding (the search is then lexical for it).
    """
    changed = []
    if not ticket.language:
        language = text_language(_text(ticket))
        if language:
            ticket.language = language
            changed.append("language")
    model = embeddings.current_model()
    if model and (ticket.embedding is None or ticket.embedding_model != model):
        try:
            embedded = embeddings.embed_texts([_text(ticket)])
        except embeddings.EmbeddingError as exc:
            log.warning("embedding ticket %s failed: %s", ticket.pk, exc)
            embedded = []
        if embedded:
            for key, value in embedded[0].fields().items():
                setattr(ticket, key, value)
            changed += EMBEDDING_FIELDS
    if changed and ticket.pk:
        ticket.updated_at = timezone.now()  # the search's window reads rows by updated_at (tickets/search/window.py)
        Ticket.objects.filter(pk=ticket.pk).update(**{key: getattr(ticket, key) for key in [*changed, "updated_at"]})
    return ticket


SWEEP_EMBED_LIMIT = 2000  # per sweep (every minute): a few seconds of work at most, even with a remote provider


def ticket_embed_due() -> int:
    """Embed up to SWEEP_EMBED_LIMIT pending history tickets; return how many (0 on a provider failure, logged)."""
    try:
        return ticket_embed_pending(limit=SWEEP_EMBED_LIMIT)
    except embeddings.EmbeddingError as exc:
        log.warning("embedding pending tickets failed, will retry on the next sweep: %s", exc)
        return 0
