"""Tickets that change: request_updated events, the new-information check, and the refreshed enhancement.

No loops: SDP fires its edit trigger for our own notes and field writes too. The check therefore compares what
the ticket says (its description and the requester's replies) with what the last enhancement was built from, and
ignores everything that carries our marker; an event without new words ends as "unchanged", never as a note.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from clusters.similarity import content_words
from enhancements.models import Enhancement, TicketUpdate
from project.retry import backoff_delay
from tickets.models import Tenant, Ticket
from tickets.sdp.auth import servicedesk_client
from tickets.sdp.client import ServiceDeskError
from tickets.sdp.mapping import ticket_fields_from_sdp
from tickets.text import html_to_text

if TYPE_CHECKING:
    from django_q.brokers import Broker

logger = logging.getLogger(__name__)

TASK_UPDATE = "enhancements.tasks.process_ticket_update"
MARKER_PREFIX = "ticket-enhancer:"  # every note of ours carries it (enhancements.render.marker)
MIN_NEW_WORDS = 3  # fewer new content words than this ("thanks", a fixed typo) is not new information
MAX_REPLY_CHARS = 4000
ACTIVE_WAIT = timedelta(seconds=30)  # an enhancement of the ticket is still running: look again after this
UPDATE_STUCK_AFTER = timedelta(minutes=5)
UPDATE_MAX_ATTEMPTS = 5
REPLIES_HEADER = "--- Replies from the requester ---"
S = TicketUpdate.Status


@dataclass(frozen=True)
class UpdateOutcome:
    """What the webhook did with a request_updated event."""

    update_id: str
    duplicate: bool = False
    ignored: str = ""


# --- the webhook's part (hot path: one short transaction) --------------------------------------------------
@functools.cache
def _broker() -> Broker:
    from django_q.brokers import get_broker

    return get_broker()


def ticket_update_enqueue(*, update_id: str) -> bool:
    """Hand the update check to the task queue; the sweep picks it up when the broker is down."""
    from django_q.tasks import async_task

    try:
        async_task(TASK_UPDATE, str(update_id), task_name=f"update-{update_id}", broker=_broker())
        return True
    except Exception:
        logger.exception("could not enqueue ticket update %s; the sweep will pick it up", update_id)
        TicketUpdate.objects.filter(pk=update_id, status=S.PENDING).update(enqueued_at=None)
        return False


def _carries_marker(value: Any) -> bool:
    if isinstance(value, str):
        return MARKER_PREFIX in value
    if isinstance(value, dict):
        return any(_carries_marker(v) for v in value.values())
    if isinstance(value, list):
        return any(_carries_marker(v) for v in value)
    return False


def ticket_update_receive(
    *, tenant: Tenant, request: dict[str, Any], delivery_id: str | None, request_id: str = ""
) -> UpdateOutcome:
    """Store the event and queue its check after commit; an event carrying our own note is answered ignored."""
    if _carries_marker(request):
        # The trigger sent the note we just posted: nothing a requester wrote.
        return UpdateOutcome(update_id="", ignored="The update carries a Ticket Enhancer note.")
    try:
        with transaction.atomic():
            update = TicketUpdate.objects.create(
                tenant=tenant,
                sdp_id=str(request["id"]),
                delivery_id=delivery_id or None,
                request_id=request_id[:64],
                payload=request,
                enqueued_at=timezone.now(),
            )
            transaction.on_commit(lambda: ticket_update_enqueue(update_id=str(update.pk)))
    except IntegrityError:
        pk = TicketUpdate.objects.filter(tenant=tenant, delivery_id=delivery_id).values_list("pk", flat=True).first()
        if pk is None:
            raise
        return UpdateOutcome(update_id=str(pk), duplicate=True)
    return UpdateOutcome(update_id=str(update.pk))


# --- the worker's part ----------------------------------------------------------------------------------
@dataclass
class Information:
    """What the requester has told us: the description and their replies."""

    description: str
    replies: list[dict[str, str]]  # {"id", "text", "from"}

    def words(self) -> set[str]:
        """Return the content words of the description and every reply."""
        found = set(content_words(self.description, cap=5000))
        for reply in self.replies:
            found.update(content_words(reply["text"], cap=2000))
        return found


def _baseline(ticket: Ticket) -> tuple[Enhancement | None, str, set[str]]:
    """Return the ticket's latest enhancement, the description it was built from and the replies it had seen."""
    latest = Enhancement.objects.filter(ticket=ticket).order_by("-created_at").first()
    info = (latest.context or {}).get("information") if latest else None
    if info:
        return latest, str(info.get("description", "")), set(info.get("reply_ids", []))
    return latest, ticket.description.split(REPLIES_HEADER, 1)[0].strip(), set()


def _fetch(ticket: Ticket, payload: dict[str, Any]) -> tuple[dict[str, Any], Information]:
    """Return the request object and what it says now: from SDP when we can call it, else from the event."""
    tenant = ticket.tenant
    request = payload
    replies: list[dict[str, str]] = []
    if tenant.has_sdp_credentials:
        with servicedesk_client(tenant=tenant) as client:
            request = client.get_request(ticket.sdp_id)
            conversations = client.list_conversations(ticket.sdp_id)
        requester = (ticket.requester_email or "").lower()
        for item in conversations:
            sender = str(((item.get("from") or {}).get("email_id")) or "").lower()
            text = html_to_text(str(item.get("description") or ""))
            if not text or MARKER_PREFIX in str(item.get("description") or ""):
                continue  # our own notes and replies never count as information
            if requester and sender and sender != requester:
                continue  # a technician's reply is not the requester's information
            replies.append({"id": str(item.get("id", "")), "text": text[:MAX_REPLY_CHARS], "from": sender})
    description = html_to_text(str(request.get("description") or "")) if "description" in request else None
    if description is None or MARKER_PREFIX in str(request.get("description") or ""):
        description = ticket.description.split(REPLIES_HEADER, 1)[0].strip()
    return request, Information(description=description, replies=replies)


def _finish(update: TicketUpdate, status: str, reason: str, **fields: Any) -> str:
    TicketUpdate.objects.filter(pk=update.pk).update(
        status=status, reason=reason[:2000], finished_at=timezone.now(), **fields
    )
    logger.info("ticket update of #%s: %s (%s)", update.sdp_id, status, reason)
    return status


def _defer(update: TicketUpdate, until: Any, reason: str) -> str:
    TicketUpdate.objects.filter(pk=update.pk).update(
        status=S.PENDING, next_attempt_at=until, enqueued_at=None, reason=reason[:2000]
    )
    return S.PENDING


def ticket_update_claim(*, update_id: str) -> bool:
    """Move a due pending update to running; return whether this caller won it."""
    now = timezone.now()
    return (
        TicketUpdate.objects.filter(pk=update_id, status=S.PENDING)
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .update(status=S.RUNNING, started_at=now, attempts=F("attempts") + 1)
        == 1
    )


def ticket_update_process(*, update_id: str) -> str:
    """Check one update for new information; queue a refreshed enhancement when there is some."""
    if not ticket_update_claim(update_id=update_id):
        return "skipped"
    update = TicketUpdate.objects.select_related("tenant").get(pk=update_id)
    try:
        return _process(update)
    except ServiceDeskError as exc:
        if exc.permanent or update.attempts >= UPDATE_MAX_ATTEMPTS:
            return _finish(update, S.FAILED, f"ServiceDesk Plus: {exc}")
        delay = max(backoff_delay(update.attempts, base=settings.ENHANCEMENT_RETRY_BASE, cap=300), exc.retry_after or 0)
        return _defer(update, timezone.now() + timedelta(seconds=delay), f"Will retry: ServiceDesk Plus: {exc}")
    except Exception as exc:
        # Anything else (a database blip, an answer of a shape we did not expect, a bug) is retried a bounded
        # number of times like SDP errors; before, the row sat in running until the sweep re-queued it, forever.
        logger.exception("ticket update of #%s failed unexpectedly", update.sdp_id)
        if update.attempts >= UPDATE_MAX_ATTEMPTS:
            return _finish(update, S.FAILED, f"Gave up after {update.attempts} attempts: unexpected error: {exc!r}")
        delay = backoff_delay(update.attempts, base=settings.ENHANCEMENT_RETRY_BASE, cap=300)
        return _defer(update, timezone.now() + timedelta(seconds=delay), f"Will retry: unexpected error: {exc!r}")


def _process(update: TicketUpdate) -> str:
    tenant = update.tenant
    ticket = Ticket.objects.select_related("tenant").filter(tenant=tenant, sdp_id=update.sdp_id).first()
    if ticket is None:
        return _finish(update, S.IGNORED, "Unknown ticket: its request_created event enhances it first.")
    # Later events of the same ticket are covered by this check (it reads the ticket as it is now).
    TicketUpdate.objects.filter(
        tenant=tenant, sdp_id=update.sdp_id, status=S.PENDING, received_at__lte=update.received_at
    ).exclude(pk=update.pk).update(
        status=S.UNCHANGED, reason=f"Covered by update {update.pk}.", finished_at=timezone.now()
    )
    if tenant.refresh_interval_minutes == 0:
        return _finish(update, S.IGNORED, "Refreshing on update is off for this tenant.")
    if ticket.is_resolved:
        return _finish(update, S.IGNORED, "The ticket is resolved or closed.")
    latest, old_description, seen = _baseline(ticket)
    if latest is None:
        return _finish(update, S.IGNORED, "The ticket has no enhancement yet.")
    now = timezone.now()
    if latest.status in Enhancement.ACTIVE_STATUSES:
        return _defer(update, now + ACTIVE_WAIT, "An enhancement of this ticket is still running.")
    request, info = _fetch(ticket, update.payload)
    status = str((request.get("status") or {}).get("name") or "") if isinstance(request.get("status"), dict) else ""
    if status in Ticket.RESOLVED_STATUSES:
        return _finish(update, S.IGNORED, f"The ticket is {status.lower()}.")
    old_words = set(content_words(old_description, cap=5000))
    new_in_description = set(content_words(info.description, cap=5000)) - old_words
    fresh_replies = [r for r in info.replies if r["id"] not in seen]
    reply_words: set[str] = set()
    for reply in fresh_replies:
        reply_words.update(content_words(reply["text"], cap=2000))
    reply_words -= old_words
    if len(new_in_description) < MIN_NEW_WORDS and len(reply_words) < MIN_NEW_WORDS:
        return _finish(update, S.UNCHANGED, "No new information (our own notes and field writes end here).")
    last_refresh = (
        Enhancement.objects.filter(ticket=ticket, trigger=Enhancement.Trigger.UPDATE)
        .order_by("-created_at")
        .values_list("created_at", flat=True)
        .first()
    )
    interval = timedelta(minutes=tenant.refresh_interval_minutes)
    if last_refresh and last_refresh > now - interval:
        # Not lost: checked again when the interval has passed, with whatever else arrived by then.
        return _defer(update, last_refresh + interval, "Refreshed recently; checked again when the interval ends.")
    if fresh_replies and len(reply_words) >= MIN_NEW_WORDS:
        reason = (
            f"The requester replied ({len(fresh_replies)} new {'reply' if len(fresh_replies) == 1 else 'replies'})."
        )
    else:
        reason = "The ticket's description changed."
    return _refresh(update, ticket, latest, request, info, reason)


def _refresh(
    update: TicketUpdate, ticket: Ticket, latest: Enhancement, request: dict[str, Any], info: Information, reason: str
) -> str:
    fields = {k: v for k, v in ticket_fields_from_sdp(request).items() if k != "description" and v not in ("", None)}
    text = info.description
    if info.replies:
        text += f"\n\n{REPLIES_HEADER}\n" + "\n\n".join(r["text"] for r in info.replies)
    with transaction.atomic():
        Ticket.objects.filter(pk=ticket.pk).update(description=text, updated_at=timezone.now(), **fields)
        enhancement = Enhancement.objects.create(
            tenant=ticket.tenant,
            ticket=ticket,
            trigger=Enhancement.Trigger.UPDATE,
            request_id=update.request_id,
            enqueued_at=timezone.now(),
            context={
                "update": {"update_id": str(update.pk), "reason": reason, "previous_enhancement": str(latest.pk)},
                "information": {"description": info.description, "reply_ids": [r["id"] for r in info.replies]},
            },
        )
        from enhancements.services import enhancement_enqueue

        transaction.on_commit(lambda: enhancement_enqueue(enhancement_id=str(enhancement.pk)))
        _finish(update, S.REFRESHED, reason, enhancement=enhancement)
    return S.REFRESHED


def ticket_update_sweep(*, limit: int = 200) -> int:
    """Re-enqueue updates that are due (deferred or lost by the broker) and recover stuck ones."""
    now = timezone.now()
    stuck = TicketUpdate.objects.filter(status=S.RUNNING, started_at__lt=now - UPDATE_STUCK_AFTER)
    # A worker died during the last allowed attempt: stop there, as for any other failure.
    stuck.filter(attempts__gte=UPDATE_MAX_ATTEMPTS).update(
        status=S.FAILED,
        reason=f"The worker stopped responding during the last allowed attempt ({UPDATE_MAX_ATTEMPTS}).",
        finished_at=now,
    )
    stuck.update(status=S.PENDING, next_attempt_at=now, enqueued_at=None)
    due = TicketUpdate.objects.filter(status=S.PENDING).filter(
        Q(enqueued_at__isnull=True, next_attempt_at__isnull=True)
        | Q(enqueued_at__isnull=True, next_attempt_at__lte=now)
        | Q(enqueued_at__lt=now - UPDATE_STUCK_AFTER)
    )
    count = 0
    for pk, enqueued_at in due.values_list("pk", "enqueued_at")[:limit]:
        if TicketUpdate.objects.filter(pk=pk, status=S.PENDING, enqueued_at=enqueued_at).update(enqueued_at=now):
            count += ticket_update_enqueue(update_id=str(pk))
    return count
