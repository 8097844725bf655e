"""The enhancement pipeline: create, enqueue, claim, process, post, retry, fail and sweep."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from enhancements.context import context_gather
from enhancements.extras import output_extras, pipeline_extras
from enhancements.llm import enhancement_generate
from enhancements.llm_budget import BudgetExhausted
from enhancements.models import Enhancement
from enhancements.render import note_has_marker, note_render
from enhancements.runner import worker_name
from enhancements.triage.services import triage_for_enhancement
from enhancements.webhook_fastpath import store_new_ticket
from project.logging import log_context
from project.retry import backoff_delay
from tickets.models import Tenant, Ticket
from tickets.sdp.auth import servicedesk_client
from tickets.sdp.client import ServiceDeskError
from tickets.sdp.mapping import ticket_fields_from_sdp
from tickets.services import ticket_merge_webhook, ticket_refresh_from_sdp

if TYPE_CHECKING:
    from django_q.brokers import Broker

logger = logging.getLogger(__name__)

TASK_PROCESS = "enhancements.tasks.process_enhancement"


class PermanentError(Exception):
    """A failure that retrying cannot fix (bad configuration, missing data)."""


@dataclass(frozen=True)
class WebhookOutcome:
    """What the webhook did with a request_created event."""

    enhancement_id: str
    duplicate: bool


# --- enqueueing -------------------------------------------------------------------------------
@functools.cache
def _broker() -> Broker:
    """Return this process's task broker, created once so every enqueue reuses its connections."""
    from django_q.brokers import get_broker

    # async_task builds a new broker, hence a new Redis connection, on every call unless given one: one
    # TCP connection (left in TIME_WAIT) per webhook, which runs out of ports at a few hundred per second.
    return get_broker()


def enhancement_enqueue(*, enhancement_id: str) -> bool:
    """Hand the enhancement to the task queue; return False (and leave it to the sweep) on failure."""
    from django_q.tasks import async_task

    try:
        async_task(TASK_PROCESS, str(enhancement_id), task_name=f"enhance-{enhancement_id}", broker=_broker())
        return True
    except Exception:
        # The row is the truth: a broker outage must not lose or fail the webhook. The sweep
        # enqueues rows whose enqueued_at is empty.
        logger.exception("could not enqueue enhancement %s; the sweep will pick it up", enhancement_id)
        Enhancement.objects.filter(pk=enhancement_id, status=Enhancement.Status.QUEUED).update(enqueued_at=None)
        return False


# --- creation ---------------------------------------------------------------------------------
def enhancement_create_from_webhook(
    *, tenant: Tenant, request: dict[str, Any], delivery_id: str | None, request_id: str = ""
) -> WebhookOutcome:
    """Store the ticket and a queued Enhancement in one transaction; enqueue after commit."""
    sdp_id = str(request["id"])
    try:
        if connection.vendor == "postgresql" and not connection.in_atomic_block:
            # One statement for the common case, a new ticket (enhancements/webhook_fastpath.py).
            pk = store_new_ticket(
                ticket=Ticket(
                    tenant=tenant,
                    sdp_id=sdp_id,
                    source=Ticket.Source.WEBHOOK,
                    raw=request,
                    **ticket_fields_from_sdp(request),
                ),
                enhancement=Enhancement(
                    tenant=tenant,
                    delivery_id=delivery_id or None,
                    request_id=request_id[:64],
                    enqueued_at=timezone.now(),
                ),
            )
            if pk is not None:
                enhancement_enqueue(enhancement_id=pk)
                return WebhookOutcome(enhancement_id=pk, duplicate=False)
        with transaction.atomic():
            ticket = Ticket.objects.filter(tenant=tenant, sdp_id=sdp_id).first()
            if ticket is None:
                # Plain INSERTs, no savepoints or look-ups first: a concurrent delivery of the same request,
                # or a reused delivery id, breaks a unique constraint, the transaction rolls back whole,
                # and the handler below answers "duplicate".
                ticket = Ticket.objects.create(
                    tenant=tenant,
                    sdp_id=sdp_id,
                    source=Ticket.Source.WEBHOOK,
                    raw=request,
                    **ticket_fields_from_sdp(request),
                )
            else:
                existing = Enhancement.objects.filter(ticket=ticket, trigger=Enhancement.Trigger.WEBHOOK)
                earlier = existing.values_list("pk", flat=True).first()
                if earlier:
                    return WebhookOutcome(enhancement_id=str(earlier), duplicate=True)
                ticket_merge_webhook(ticket=ticket, request=request)
            enhancement = Enhancement.objects.create(
                tenant=tenant,
                ticket=ticket,
                delivery_id=delivery_id or None,
                request_id=request_id[:64],
                enqueued_at=timezone.now(),
            )
            transaction.on_commit(lambda: enhancement_enqueue(enhancement_id=str(enhancement.pk)))
    except IntegrityError:
        # A reused delivery id, or a concurrent delivery of the same request that won the race.
        found = None
        if delivery_id:
            found = (
                Enhancement.objects.filter(tenant=tenant, delivery_id=delivery_id).values_list("pk", flat=True).first()
            )
        if found is None:
            same = Q(tenant=tenant, ticket__sdp_id=sdp_id, trigger=Enhancement.Trigger.WEBHOOK)
            found = Enhancement.objects.filter(same).values_list("pk", flat=True).first()
        if found is None:
            raise
        return WebhookOutcome(enhancement_id=str(found), duplicate=True)
    return WebhookOutcome(enhancement_id=str(enhancement.pk), duplicate=False)


def enhancement_rerun(*, enhancement: Enhancement) -> Enhancement:
    """Create a new queued Enhancement for the same ticket (history is kept) and enqueue it."""
    with transaction.atomic():
        new = Enhancement.objects.create(
            tenant=enhancement.tenant,
            ticket=enhancement.ticket,
            trigger=Enhancement.Trigger.RERUN,
            enqueued_at=timezone.now(),
        )
        transaction.on_commit(lambda: enhancement_enqueue(enhancement_id=str(new.pk)))
    return new


# --- processing -------------------------------------------------------------------------------
def enhancement_claim(*, enhancement_id: str) -> bool:
    """Move a due queued enhancement to running; return whether this caller won it."""
    now = timezone.now()
    return (
        Enhancement.objects.filter(pk=enhancement_id, status=Enhancement.Status.QUEUED)
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .update(
            status=Enhancement.Status.RUNNING,
            started_at=now,
            attempts=F("attempts") + 1,
            heartbeat_at=now,
            worker=worker_name()[:100],
        )
        == 1
    )


@contextmanager
def _stage(timings: dict[str, int], name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round((time.perf_counter() - start) * 1000)


def enhancement_process(*, enhancement_id: str) -> str:
    """Run one attempt of the pipeline for a queued enhancement; return its resulting status."""
    with log_context(enhancement_id=str(enhancement_id)):
        if not enhancement_claim(enhancement_id=enhancement_id):
            logger.info("enhancement not claimable (already taken, finished or not due)")
            return "skipped"
        enhancement = Enhancement.objects.select_related("tenant", "ticket", "ticket__tenant").get(pk=enhancement_id)
        timings: dict[str, int] = dict(enhancement.timings or {})
        try:
            return _process(enhancement, timings)
        except ServiceDeskError as exc:
            if exc.permanent:
                return enhancement_fail(enhancement=enhancement, error=f"ServiceDesk Plus: {exc}", timings=timings)
            return enhancement_retry_later(
                enhancement=enhancement, error=f"ServiceDesk Plus: {exc}", retry_after=exc.retry_after, timings=timings
            )
        except PermanentError as exc:
            return enhancement_fail(enhancement=enhancement, error=str(exc), timings=timings)
        except BudgetExhausted as exc:
            return enhancement_retry_later(
                enhancement=enhancement, error=str(exc), retry_after=exc.retry_after, timings=timings
            )
        except Exception as exc:
            logger.exception("unexpected error while processing")
            return enhancement_retry_later(
                enhancement=enhancement, error=f"Unexpected error: {exc.__class__.__name__}: {exc}", timings=timings
            )


def _process(enhancement: Enhancement, timings: dict[str, int]) -> str:
    tenant, ticket = enhancement.tenant, enhancement.ticket
    if enhancement.note_html and enhancement.post_started_at:
        # An earlier attempt generated the note and may have posted it: only the post is left.
        return _post_timed(enhancement, timings)

    with _stage(timings, "load"):
        if not ticket.description or not ticket.subject:
            if tenant.has_sdp_credentials:
                ticket = ticket_refresh_from_sdp(ticket=ticket)
            elif not ticket.is_complete:
                raise PermanentError(
                    "The webhook carried neither a subject nor a description, and the tenant has no SDP "
                    "credentials to fetch them. Send the full request in the webhook or add an SDP API key."
                )
    with _stage(timings, "context"):
        context = context_gather(ticket=ticket)
    with _stage(timings, "cluster"):
        context.update(pipeline_extras(enhancement=enhancement, ticket=ticket, context=context))
    with _stage(timings, "generate"):
        generation = enhancement_generate(tenant=tenant, ticket=ticket, context=context)
    generation.output = output_extras(context=context, generation=generation)
    enhancement.urgency = generation.output.get("urgency_cues", [])
    with _stage(timings, "triage"):
        triage_for_enhancement(enhancement=enhancement, ticket=ticket, output=generation.output)
    with _stage(timings, "render"):
        note_html = note_render(
            tenant=tenant,
            enhancement_id=str(enhancement.pk),
            output=generation.output,
            context=context,
            provider=generation.provider,
            model=generation.model,
            fallback_reason=generation.fallback_reason,
        )
    enhancement.context = context
    enhancement.output = generation.output
    enhancement.provider = generation.provider
    enhancement.model = generation.model
    enhancement.prompt_tokens = generation.prompt_tokens
    enhancement.completion_tokens = generation.completion_tokens
    enhancement.note_html = note_html
    enhancement.timings = timings
    enhancement.error = (
        f"LLM unavailable, offline note used: {generation.fallback_reason}" if generation.fallback_reason else ""
    )
    now = timezone.now()
    generated = [
        "context", "output", "provider", "model", "prompt_tokens", "completion_tokens", "note_html", "timings", "error",
        "urgency",
    ]  # fmt: skip
    if tenant.review_required:
        enhancement.status = Enhancement.Status.AWAITING_REVIEW
        enhancement.save(update_fields=[*generated, "status"])
        return enhancement.status
    if not tenant.has_sdp_credentials:
        enhancement.status = Enhancement.Status.COMPLETED
        enhancement.finished_at = now
        enhancement.save(update_fields=[*generated, "status", "finished_at"])
        return enhancement.status
    enhancement.save(update_fields=generated)
    return _post_timed(enhancement, timings)


def _post_timed(enhancement: Enhancement, timings: dict[str, int]) -> str:
    with _stage(timings, "post"):
        # Fenced on this attempt: if the sweep gave the row to another worker meanwhile, this one stops here.
        status = enhancement_post(
            enhancement=enhancement, fence={"status": Enhancement.Status.RUNNING, "attempts": enhancement.attempts}
        )
    Enhancement.objects.filter(pk=enhancement.pk).update(timings=timings)
    return status


def enhancement_post(*, enhancement: Enhancement, fence: dict[str, Any] | None = None) -> str:
    """Post the note to SDP exactly once; return "posted" (or the row's status when `fence` no longer matches)."""
    tenant, ticket = enhancement.tenant, enhancement.ticket
    with servicedesk_client(tenant=tenant) as client:
        if enhancement.post_started_at:
            # An earlier post had an unclear outcome: look for our marker before posting again.
            for note in client.list_notes(ticket.sdp_id):
                if note_has_marker(str(note.get("description", "")), str(enhancement.pk)):
                    logger.info("note already in SDP (id %s); not posting again", note.get("id"))
                    return _mark_posted(enhancement, str(note.get("id", "")))
        # Record the attempt before the call, so a crash or timeout leaves a row that says so.
        if not Enhancement.objects.filter(pk=enhancement.pk, **(fence or {})).update(post_started_at=timezone.now()):
            logger.warning("the row was taken over by another attempt; not posting")
            return Enhancement.objects.values_list("status", flat=True).get(pk=enhancement.pk)
        enhancement.post_started_at = timezone.now()
        note = client.add_note(ticket.sdp_id, enhancement.note_html)
    return _mark_posted(enhancement, str(note.get("id", "")))


def _mark_posted(enhancement: Enhancement, note_id: str) -> str:
    now = timezone.now()
    enhancement.status = Enhancement.Status.POSTED
    enhancement.sdp_note_id = note_id
    enhancement.posted_at = now
    enhancement.finished_at = now
    if enhancement.error.startswith("Attempt"):
        enhancement.error = ""  # the retry succeeded; an LLM-fallback notice is kept
    enhancement.save(update_fields=["status", "sdp_note_id", "posted_at", "finished_at", "error"])
    logger.info("note posted to SDP request %s", enhancement.ticket.sdp_id)
    return enhancement.status


def enhancement_fail(*, enhancement: Enhancement, error: str, timings: dict[str, int] | None = None) -> str:
    """Mark the enhancement failed with a sentence a support lead understands."""
    logger.warning("enhancement failed: %s", error)
    Enhancement.objects.filter(pk=enhancement.pk).update(
        status=Enhancement.Status.FAILED,
        error=error[:2000],
        finished_at=timezone.now(),
        **({"timings": timings} if timings is not None else {}),
    )
    return Enhancement.Status.FAILED


def enhancement_retry_later(
    *,
    enhancement: Enhancement,
    error: str,
    retry_after: float | None = None,
    timings: dict[str, int] | None = None,
) -> str:
    """Put the enhancement back in the queue with backoff, or fail it after the last attempt (project/retry.py)."""
    attempts = Enhancement.objects.filter(pk=enhancement.pk).values_list("attempts", flat=True).first() or 0
    if attempts >= settings.ENHANCEMENT_MAX_ATTEMPTS:
        return enhancement_fail(
            enhancement=enhancement, error=f"Gave up after {attempts} attempts. Last error: {error}", timings=timings
        )
    delay = backoff_delay(attempts, base=settings.ENHANCEMENT_RETRY_BASE, cap=settings.ENHANCEMENT_RETRY_MAX)
    delay = max(delay, retry_after or 0.0)
    logger.info("attempt %d failed (%s); retrying in %.0fs", attempts, error, delay)
    Enhancement.objects.filter(pk=enhancement.pk, status=Enhancement.Status.RUNNING).update(
        status=Enhancement.Status.QUEUED,
        next_attempt_at=timezone.now() + timedelta(seconds=delay),
        error=f"Attempt {attempts} failed, will retry: {error}"[:2000],
        **({"timings": timings} if timings is not None else {}),
    )
    return Enhancement.Status.QUEUED


# --- the sweep --------------------------------------------------------------------------------
def _broker_is_empty() -> bool:
    try:
        return _broker().queue_size() == 0
    except Exception:
        logger.warning("sweep: could not read the broker's queue length", exc_info=True)
        return False


def enhancement_sweep(*, limit: int = 500) -> dict[str, int]:
    """Re-enqueue queued rows that are due or lost and recover running rows whose worker died."""
    now = timezone.now()
    stuck_before = now - timedelta(seconds=settings.ENHANCEMENT_STUCK_AFTER)
    # A worker beats for its running rows (enhancements/runner.py): a stale beat is a dead worker, whatever
    # the attempt's age. Rows without a beat (a web process's re-post) wait for ENHANCEMENT_STUCK_AFTER.
    dead_before = now - timedelta(seconds=settings.ENHANCEMENT_DEAD_AFTER)
    running = Enhancement.objects.filter(status=Enhancement.Status.RUNNING)
    stale = running.filter(Q(started_at__lt=stuck_before) | Q(heartbeat_at__lt=dead_before))
    recovered = 0
    for row in stale[:limit]:
        with log_context(enhancement_id=str(row.pk)):
            if row.attempts >= settings.ENHANCEMENT_MAX_ATTEMPTS:
                enhancement_fail(
                    enhancement=row,
                    error=f"The worker stopped responding during attempt {row.attempts} (the last allowed).",
                )
            else:
                # Compare-and-set on the beat too: a worker that beat since the read keeps its row.
                recovered += Enhancement.objects.filter(
                    pk=row.pk,
                    status=Enhancement.Status.RUNNING,
                    started_at=row.started_at,
                    heartbeat_at=row.heartbeat_at,
                ).update(status=Enhancement.Status.QUEUED, next_attempt_at=now, enqueued_at=None)
    lost = Q(enqueued_at__lt=stuck_before)
    if _broker_is_empty():
        # Nothing waits in the broker, so a due row enqueued DEAD_AFTER ago was taken by a worker that died
        # before claiming it (a prefetched task). Enqueueing it again is harmless: the claim runs it once.
        lost |= Q(enqueued_at__lt=dead_before) & (Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
    due = Enhancement.objects.filter(status=Enhancement.Status.QUEUED).filter(
        Q(enqueued_at__isnull=True) | Q(next_attempt_at__lte=now, enqueued_at__lt=F("next_attempt_at")) | lost
    )
    enqueued = 0
    for pk, enqueued_at in due.values_list("pk", "enqueued_at")[:limit]:
        # Only one sweeper enqueues a row: the update succeeds for whoever saw it first.
        if Enhancement.objects.filter(pk=pk, status=Enhancement.Status.QUEUED, enqueued_at=enqueued_at).update(
            enqueued_at=now
        ):
            enqueued += enhancement_enqueue(enhancement_id=str(pk))
    if recovered or enqueued:
        logger.info("sweep: %d running rows recovered, %d rows enqueued", recovered, enqueued)
    return {"recovered": recovered, "enqueued": enqueued}
