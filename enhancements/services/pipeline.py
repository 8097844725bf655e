"""The enhancement pipeline: create, claim, process, post, retry, fail and sweep."""

from __future__ import annotations

import functools
import hashlib
import logging
import secrets as _secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import nh3
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from enhancements.context import context_gather
from enhancements.extras import output_extras, pipeline_extras
from enhancements.llm import enhancement_generate
from enhancements.llm_budget import BudgetExhausted
from enhancements.models import ApiToken, Enhancement, Feedback
from enhancements.render import marker, note_has_marker, note_render
from enhancements.runner import worker_name
from enhancements.triage.services import triage_for_enhancement
from enhancements.webhook_fastpath import store_new_ticket
from project.logging import log_context
from tickets.models import Tenant, Ticket
from tickets.sdp.auth import servicedesk_client
from tickets.sdp.client import ServiceDeskError, backoff_delay
from tickets.sdp.mapping import ticket_fields_from_sdp
from tickets.services import ticket_refresh_from_sdp

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
                pk = existing.values_list("pk", flat=True).first()
                if pk:
                    return WebhookOutcome(enhancement_id=str(pk), duplicate=True)
                _ticket_update(ticket, ticket_fields_from_sdp(request), request)
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
        pk = None
        if delivery_id:
            pk = Enhancement.objects.filter(tenant=tenant, delivery_id=delivery_id).values_list("pk", flat=True).first()
        if pk is None:
            same = Q(tenant=tenant, ticket__sdp_id=sdp_id, trigger=Enhancement.Trigger.WEBHOOK)
            pk = Enhancement.objects.filter(same).values_list("pk", flat=True).first()
        if pk is None:
            raise
        return WebhookOutcome(enhancement_id=str(pk), duplicate=True)
    return WebhookOutcome(enhancement_id=str(enhancement.pk), duplicate=False)


def _ticket_update(ticket: Ticket, fields: dict[str, Any], raw: dict[str, Any]) -> None:
    changed = [k for k, v in fields.items() if v not in ("", None) and getattr(ticket, k) != v]
    for key in changed:
        setattr(ticket, key, fields[key])
    if changed:
        ticket.raw = raw
        ticket.save(update_fields=[*changed, "raw", "updated_at"])


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
    """Put the enhancement back in the queue with backoff, or fail it after the last attempt."""
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


# --- review (admin and API) -------------------------------------------------------------------

# An approval whose post never finished (the web process died) can be approved again after this.
APPROVAL_CLAIM_EXPIRES = timedelta(minutes=5)
_POST_FAILED = "Approved, but posting failed; still awaiting review: "
NOTE_TAGS = {"a", "b", "strong", "i", "em", "u", "p", "br", "div", "span", "ul", "ol", "li", "pre", "code", "h3", "h4"}
NOTE_ATTRIBUTES = {"a": {"href", "target"}, "p": {"style"}, "span": {"style"}, "div": {"style"}}
NOTE_STYLE_PROPERTIES = {"color", "font-size", "font-weight", "font-style"}
API_TOKEN_PREFIX = "te_"  # noqa: S105 - a label that makes leaked keys recognisable, not a secret


@dataclass(frozen=True)
class ReviewResult:
    """The outcome of a review action: whether it changed anything, the status, and a sentence to show."""

    changed: bool
    status: str
    message: str
    failed: bool = False
    enhancement_id: str = ""


def note_sanitise(*, html: str, enhancement_id: str) -> str:
    """Return the note reduced to the markup SDP shows, with this enhancement's marker appended."""
    cleaned = nh3.clean(
        html,
        tags=NOTE_TAGS,
        attributes=NOTE_ATTRIBUTES,
        filter_style_properties=NOTE_STYLE_PROPERTIES,
        clean_content_tags={"script", "style"},
        url_schemes={"http", "https", "mailto"},
        strip_comments=True,
    )
    # The marker comment is how a retry recognises the note in SDP (see enhancement_post).
    return cleaned + marker(str(enhancement_id))


def _reviewable(now: datetime) -> Q:
    return Q(status=Enhancement.Status.AWAITING_REVIEW) & (
        Q(reviewed_at__isnull=True) | Q(reviewed_at__lt=now - APPROVAL_CLAIM_EXPIRES)
    )


def _label(enhancement: Enhancement) -> str:
    return Enhancement.Status(enhancement.status).label.lower()


def enhancement_approve(
    *, enhancement_id: str, user: AbstractBaseUser | None, note_html: str | None = None
) -> ReviewResult:
    """Save the (edited) note sanitised, claim the row, and post it to SDP; never post twice."""
    now = timezone.now()
    row = Enhancement.objects.select_related("tenant", "ticket").get(pk=enhancement_id)
    updates: dict[str, Any] = {"reviewed_by": user, "reviewed_at": now}
    if note_html is not None:
        updates["note_html"] = note_sanitise(html=note_html, enhancement_id=str(row.pk))
    # Claim with a conditional update: of two approvals (double click, two reviewers) one posts.
    if not Enhancement.objects.filter(_reviewable(now), pk=row.pk).update(**updates):
        row.refresh_from_db()
        who = f" by {row.reviewed_by}" if row.reviewed_by_id else ""
        return ReviewResult(
            changed=False,
            status=row.status,
            message=f"Nothing done: the enhancement is {_label(row)}{who}, not awaiting review.",
            enhancement_id=str(row.pk),
        )
    try:
        row.refresh_from_db()
        if not row.tenant.has_sdp_credentials:
            Enhancement.objects.filter(pk=row.pk).update(status=Enhancement.Status.COMPLETED, finished_at=now)
            return ReviewResult(
                changed=True,
                status=Enhancement.Status.COMPLETED,
                message="Approved. The tenant has no SDP credentials (dry run), so the note was kept, not posted.",
                enhancement_id=str(row.pk),
            )
        enhancement_post(enhancement=row)
    except ServiceDeskError as exc:
        return _post_failed(row, exc, approving=True)
    except Exception as exc:
        return _post_crashed(row, exc, approving=True)
    Enhancement.objects.filter(pk=row.pk, error__startswith=_POST_FAILED).update(error="")
    return ReviewResult(
        changed=True,
        status=Enhancement.Status.POSTED,
        message=f"Approved and posted to SDP request #{row.ticket.sdp_id}.",
        enhancement_id=str(row.pk),
    )


def _post_crashed(row: Enhancement, exc: Exception, *, approving: bool) -> ReviewResult:
    """Release a claimed row after an unexpected error, so it is never left claimed; say what happened."""
    logger.exception("unexpected error while posting enhancement %s", row.pk)
    reason = f"{exc.__class__.__name__}: {exc}"
    if approving:
        status = Enhancement.Status.AWAITING_REVIEW
        Enhancement.objects.filter(pk=row.pk).update(
            status=status, reviewed_by=None, reviewed_at=None, error=f"{_POST_FAILED}{reason}"[:2000]
        )
        then = "It is still awaiting review; approve it again to retry (a note already in SDP is not posted twice)."
    else:
        status = Enhancement.Status.FAILED
        Enhancement.objects.filter(pk=row.pk).update(
            status=status, finished_at=timezone.now(), error=f"Posting the note failed: {reason}"[:2000]
        )
        then = "It is marked failed; re-post it once the cause is fixed (a note already in SDP is not posted twice)."
    return ReviewResult(
        changed=True,
        failed=True,
        status=status,
        message=f"Not posted: unexpected error ({reason}). {then}",
        enhancement_id=str(row.pk),
    )


def _post_failed(row: Enhancement, exc: ServiceDeskError, *, approving: bool) -> ReviewResult:
    if approving and not exc.permanent:
        # A transient failure (timeout, 5xx, throttling) leaves the note reviewable; approving again
        # first looks for the note in SDP, so an unclear outcome is not posted twice.
        Enhancement.objects.filter(pk=row.pk, status=Enhancement.Status.AWAITING_REVIEW).update(
            reviewed_by=None, reviewed_at=None, error=f"{_POST_FAILED}ServiceDesk Plus: {exc}"[:2000]
        )
        return ReviewResult(
            changed=True,
            failed=True,
            status=Enhancement.Status.AWAITING_REVIEW,
            message=f"Not posted: ServiceDesk Plus: {exc} The enhancement is still awaiting review; approve it "
            "again to retry.",
            enhancement_id=str(row.pk),
        )
    enhancement_fail(enhancement=row, error=f"Posting the note failed: ServiceDesk Plus: {exc}")
    return ReviewResult(
        changed=True,
        failed=True,
        status=Enhancement.Status.FAILED,
        message=f"Not posted: ServiceDesk Plus: {exc} The enhancement is marked failed; fix the cause and re-post it.",
        enhancement_id=str(row.pk),
    )


def enhancement_note_update(*, enhancement_id: str, note_html: str) -> bool:
    """Save an edited note, sanitised, while the enhancement awaits review; return whether it was saved."""
    now = timezone.now()
    return bool(
        Enhancement.objects.filter(_reviewable(now), pk=enhancement_id).update(
            note_html=note_sanitise(html=note_html, enhancement_id=str(enhancement_id))
        )
    )


def enhancement_reject(*, enhancement_id: str, user: AbstractBaseUser | None) -> ReviewResult:
    """Mark an enhancement awaiting review as rejected (its note is never posted)."""
    now = timezone.now()
    rejected = Enhancement.objects.filter(_reviewable(now), pk=enhancement_id).update(
        status=Enhancement.Status.REJECTED, reviewed_by=user, reviewed_at=now, finished_at=now
    )
    row = Enhancement.objects.get(pk=enhancement_id)
    if not rejected:
        return ReviewResult(
            changed=False,
            status=row.status,
            message=f"Nothing done: the enhancement is {_label(row)}, not awaiting review.",
            enhancement_id=str(row.pk),
        )
    return ReviewResult(
        changed=True, status=row.status, message="Rejected: the note will not be posted.", enhancement_id=str(row.pk)
    )


def enhancement_rerun_request(*, enhancement_id: str, user: AbstractBaseUser | None) -> ReviewResult:
    """Queue a new enhancement of the same ticket unless one is already queued or running."""
    now = timezone.now()
    with transaction.atomic():
        row = Enhancement.objects.select_related("tenant", "ticket").get(pk=enhancement_id)
        # Lock the ticket so two concurrent re-runs of it cannot both see "nothing active".
        Ticket.objects.select_for_update().filter(pk=row.ticket_id).first()
        active = (
            Enhancement.objects.filter(ticket_id=row.ticket_id, status__in=Enhancement.ACTIVE_STATUSES)
            .order_by("-created_at")
            .first()
        )
        if active is not None:
            return ReviewResult(
                changed=False,
                status=active.status,
                message=f"Nothing done: enhancement {active.pk} of this ticket is already {_label(active)}.",
                enhancement_id=str(active.pk),
            )
        if row.status == Enhancement.Status.AWAITING_REVIEW:
            superseded = Enhancement.objects.filter(_reviewable(now), pk=row.pk).update(
                status=Enhancement.Status.REJECTED,
                reviewed_by=user,
                reviewed_at=now,
                finished_at=now,
                error="Superseded by a re-run.",
            )
            if not superseded:
                return ReviewResult(
                    changed=False,
                    status=row.status,
                    message="Nothing done: the enhancement is being approved right now.",
                    enhancement_id=str(row.pk),
                )
        new = enhancement_rerun(enhancement=row)
    return ReviewResult(
        changed=True,
        status=new.status,
        message=f"Re-run queued as enhancement {new.pk}; the earlier one is kept in the history.",
        enhancement_id=str(new.pk),
    )


def enhancement_repost(*, enhancement_id: str, user: AbstractBaseUser | None) -> ReviewResult:
    """Post the note of an enhancement whose post failed; never post twice."""
    now = timezone.now()
    # Running (with started_at) rather than a new status: if this process dies mid-post, the sweep
    # re-queues the row and the worker finishes the post, checking SDP for the note first.
    claimed = (
        Enhancement.objects.filter(pk=enhancement_id, status=Enhancement.Status.FAILED)
        .exclude(note_html="")
        .update(status=Enhancement.Status.RUNNING, started_at=now, finished_at=None)
    )
    row = Enhancement.objects.select_related("tenant", "ticket").get(pk=enhancement_id)
    if not claimed:
        reason = "has no note to post" if not row.note_html else f"is {_label(row)}, not failed"
        return ReviewResult(
            changed=False,
            status=row.status,
            message=f"Nothing done: the enhancement {reason}.",
            enhancement_id=str(row.pk),
        )
    try:
        enhancement_post(enhancement=row)
    except ServiceDeskError as exc:
        return _post_failed(row, exc, approving=False)
    except Exception as exc:
        return _post_crashed(row, exc, approving=False)
    Enhancement.objects.filter(pk=row.pk).update(error="")
    return ReviewResult(
        changed=True,
        status=Enhancement.Status.POSTED,
        message=f"Re-posted to SDP request #{row.ticket.sdp_id}.",
        enhancement_id=str(row.pk),
    )


def feedback_create(
    *,
    enhancement_id: str,
    rating: str,
    comment: str = "",
    user: AbstractBaseUser | None = None,
    technician_email: str = "",
    api_token: ApiToken | None = None,
) -> Feedback:
    """Record a rating; a second rating by the same rater (user, or token and technician) replaces the first."""
    if rating not in Feedback.Rating.values:
        raise ValueError(f"rating must be one of {', '.join(Feedback.Rating.values)}")
    enhancement = Enhancement.objects.get(pk=enhancement_id)
    values = {"rating": rating, "comment": comment.strip()}
    if api_token is not None:
        # A token rates once per enhancement for each technician it names (or once for no one).
        try:
            with transaction.atomic():
                feedback, _ = Feedback.objects.update_or_create(
                    enhancement=enhancement,
                    api_token=api_token,
                    technician_email=technician_email.lower(),
                    defaults={**values, "user": None},
                )
        except IntegrityError:  # two concurrent first ratings: the other one won, update it
            feedback = Feedback.objects.get(
                enhancement=enhancement, api_token=api_token, technician_email=technician_email.lower()
            )
            Feedback.objects.filter(pk=feedback.pk).update(**values)
            feedback.refresh_from_db()
        return feedback
    if user is not None:
        feedback, _ = Feedback.objects.update_or_create(
            enhancement=enhancement, user=user, defaults={**values, "technician_email": technician_email}
        )
    elif technician_email:
        feedback, _ = Feedback.objects.update_or_create(
            enhancement=enhancement, user=None, technician_email=technician_email.lower(), defaults=values
        )
    else:
        feedback = Feedback.objects.create(enhancement=enhancement, **values)
    return feedback


def _token_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_token_create(*, tenant: Tenant, name: str, user: AbstractBaseUser | None = None) -> tuple[ApiToken, str]:
    """Create an API token for one tenant; return it and its key, which is never retrievable again."""
    key = API_TOKEN_PREFIX + _secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        tenant=tenant, name=name, prefix=key[:10], key_hash=_token_hash(key), created_by=user
    )
    return token, key


def api_token_authenticate(*, key: str) -> ApiToken | None:
    """Return the live token with this key, or None."""
    token = ApiToken.objects.select_related("tenant").filter(key_hash=_token_hash(key), revoked_at__isnull=True).first()
    if token is None:
        return None
    now = timezone.now()
    # One write a minute at most, not one per request.
    if token.last_used_at is None or token.last_used_at < now - timedelta(minutes=1):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


def api_token_revoke(*, token_id: int) -> bool:
    """Revoke a token; return whether it was live."""
    return bool(ApiToken.objects.filter(pk=token_id, revoked_at__isnull=True).update(revoked_at=timezone.now()))
