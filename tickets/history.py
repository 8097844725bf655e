"""Resolved and closed tickets: store the event, and fetch from SDP in the worker what a minimal event lacks.

A token-mode sender (a plain SDP webhook action) often posts only `{"request": {"id": ...}}`. Answering
"stored" and keeping an empty row would lose the history silently, so a TicketFetch row records that a fetch
is due, the webhook enqueues it after commit, and the every-minute sweep enqueues any the broker lost. The
row, not the broker, is the truth, as for enhancements.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from project.retry import backoff_delay
from tickets.models import Tenant, Ticket, TicketFetch
from tickets.sdp.client import ServiceDeskError
from tickets.sdp.mapping import ticket_fields_from_sdp
from tickets.services import ticket_refresh_from_sdp, ticket_upsert

logger = logging.getLogger(__name__)

TASK_FETCH = "tickets.tasks.fetch_ticket"
# A fetch whose worker died is due again after this (the lease taken when it starts).
FETCH_LEASE = timedelta(minutes=5)
# The sweep leaves a due fetch this long to the task enqueued with it before enqueueing it again.
SWEEP_GRACE = timedelta(seconds=30)
HISTORY_FIELDS = ("subject", "description", "resolution")


class IncompleteHistoryError(ValueError):
    """A resolved event without the text history needs, for a tenant whose SDP cannot be asked for it."""


def _lacks_text(ticket: Ticket) -> bool:
    return not all(getattr(ticket, field) for field in HISTORY_FIELDS)


def ticket_store_resolved(*, tenant: Tenant, request: dict[str, Any]) -> Ticket:
    """Upsert a resolved or closed ticket; schedule a fetch of what it lacks, or raise IncompleteHistoryError."""
    fields = ticket_fields_from_sdp(request)
    fields["is_resolved"] = True
    sdp_id = str(request["id"])
    with transaction.atomic():
        old_raw = Ticket.objects.filter(tenant=tenant, sdp_id=sdp_id).values_list("raw", flat=True).first()
        # A minimal event must not replace the record an earlier, fuller event stored.
        raw = {**old_raw, **request} if isinstance(old_raw, dict) else request
        ticket, _ = ticket_upsert(tenant=tenant, sdp_id=sdp_id, fields=fields, source=Ticket.Source.WEBHOOK, raw=raw)
        if not _lacks_text(ticket):
            return ticket
        if tenant.has_sdp_credentials:
            TicketFetch.objects.update_or_create(
                ticket=ticket, defaults={"due_at": timezone.now(), "attempts": 0, "error": ""}
            )
            transaction.on_commit(lambda: ticket_fetch_enqueue(ticket_id=ticket.pk))
        elif not ticket.is_complete:
            transaction.set_rollback(True)
            raise IncompleteHistoryError(
                "The resolved event carries neither a subject nor a description, and the tenant has no SDP "
                "credentials to fetch them: send the full request (subject, description, resolution) or add an "
                "SDP API key to the tenant."
            )
    return ticket


def ticket_fetch_enqueue(*, ticket_id: int) -> bool:
    """Hand the fetch to the task queue; return False (the sweep will retry) when the broker is unavailable."""
    from django_q.tasks import async_task

    try:
        async_task(TASK_FETCH, ticket_id, task_name=f"fetch-ticket-{ticket_id}")
        return True
    except Exception:
        logger.exception("could not enqueue the SDP fetch of ticket %s; the sweep will pick it up", ticket_id)
        return False


def ticket_fetch_missing(*, ticket_id: int) -> str:
    """Fetch a due ticket's fields from SDP; return fetched, retrying, failed or skipped."""
    now = timezone.now()
    # Claim with a conditional update; the lease makes a fetch whose worker died due again.
    claimed = TicketFetch.objects.filter(ticket_id=ticket_id, due_at__lte=now).update(
        due_at=now + FETCH_LEASE, attempts=F("attempts") + 1
    )
    if not claimed:
        return "skipped"
    fetch = TicketFetch.objects.select_related("ticket", "ticket__tenant").get(ticket_id=ticket_id)
    try:
        ticket_refresh_from_sdp(ticket=fetch.ticket)
    except ServiceDeskError as exc:
        error = f"ServiceDesk Plus: {exc}"[:500]
        if exc.permanent or fetch.attempts >= settings.ENHANCEMENT_MAX_ATTEMPTS:
            logger.warning("giving up fetching ticket %s from SDP: %s", fetch.ticket.sdp_id, exc)
            TicketFetch.objects.filter(pk=ticket_id).update(due_at=None, error=error)
            return "failed"
        delay = exc.retry_after or backoff_delay(
            fetch.attempts, base=settings.ENHANCEMENT_RETRY_BASE, cap=settings.ENHANCEMENT_RETRY_MAX
        )
        TicketFetch.objects.filter(pk=ticket_id).update(due_at=timezone.now() + timedelta(seconds=delay), error=error)
        return "retrying"
    TicketFetch.objects.filter(pk=ticket_id).delete()
    return "fetched"


def ticket_fetch_sweep(*, limit: int = 500) -> int:
    """Enqueue fetches that are due and were not picked up; return how many."""
    due = TicketFetch.objects.filter(due_at__lte=timezone.now() - SWEEP_GRACE).values_list("pk", flat=True)[:limit]
    return sum(ticket_fetch_enqueue(ticket_id=pk) for pk in due)
