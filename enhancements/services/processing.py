"""Processing one enhancement: claim it, run the stages, post the note once, retry later or fail."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import F, Q
from django.db.models.functions import Greatest
from django.utils import timezone

from enhancements.context import context_gather
from enhancements.extras import output_extras, pipeline_extras
from enhancements.llm import enhancement_generate
from enhancements.llm_budget import BudgetExhausted
from enhancements.models import Enhancement
from enhancements.render import note_has_marker, note_render
from enhancements.runner import worker_name
from enhancements.triage.services import triage_run_for_enhancement
from project.logging import log_context
from project.retry import backoff_delay
from tickets.sdp.auth import servicedesk_client
from tickets.sdp.client import ServiceDeskError
from tickets.services import ticket_refresh_from_sdp
from tickets.storable import storable_text

logger = logging.getLogger(__name__)


class PermanentError(Exception):
    """A failure that retrying cannot fix (bad configuration, missing data)."""


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
            return enhancement_defer(
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
        # Waiting for room in the provider's shared budget is not a failure, up to LLM_BUDGET_MAX_DEFER in all.
        age = (timezone.now() - enhancement.created_at).total_seconds()
        wait = age < settings.LLM_BUDGET_MAX_DEFER
        generation = enhancement_generate(tenant=tenant, ticket=ticket, context=context, wait_for_budget=wait)
    generation.output = output_extras(context=context, generation=generation)
    enhancement.urgency = generation.output.get("urgency_cues", [])
    with _stage(timings, "triage"):
        triage_run_for_enhancement(enhancement=enhancement, ticket=ticket, output=generation.output)
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
    enhancement.over_budget = bool(generation.output.get("budget_reached"))
    enhancement.note_html = note_html
    enhancement.timings = timings
    enhancement.error = (
        storable_text(f"LLM unavailable, offline note used: {generation.fallback_reason}")
        if generation.fallback_reason
        else ""
    )
    now = timezone.now()
    generated = [
        "context", "output", "provider", "model", "prompt_tokens", "completion_tokens", "note_html", "timings", "error",
        "urgency", "over_budget",
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
        error=storable_text(error)[:2000],
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
        error=storable_text(f"Attempt {attempts} failed, will retry: {error}")[:2000],
        **({"timings": timings} if timings is not None else {}),
    )
    return Enhancement.Status.QUEUED


def enhancement_defer(
    *, enhancement: Enhancement, error: str, retry_after: float, timings: dict[str, int] | None = None
) -> str:
    """Queue the enhancement again after `retry_after` without spending an attempt (the LLM budget was full).

    Bounded by LLM_BUDGET_MAX_DEFER from its creation: past it, the next attempt writes the offline note.
    """
    delay = max(retry_after, 1.0) * random.uniform(1.0, 1.5)  # jitter: the deferred rows do not return together
    logger.info("the shared LLM budget is full; trying again in %.0fs (no attempt counted)", delay)
    Enhancement.objects.filter(pk=enhancement.pk, status=Enhancement.Status.RUNNING).update(
        status=Enhancement.Status.QUEUED,
        attempts=Greatest(F("attempts") - 1, 0),
        next_attempt_at=timezone.now() + timedelta(seconds=delay),
        error=storable_text(f"Waiting for room in the LLM budget (not a failed attempt): {error}")[:2000],
        **({"timings": timings} if timings is not None else {}),
    )
    return Enhancement.Status.QUEUED
