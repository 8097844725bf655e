"""Review actions of support leads (admin and API): approve, edit, reject, re-run and re-post; never post twice."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from enhancements.models import Enhancement
from enhancements.render import note_sanitise
from enhancements.services.pipeline import enhancement_rerun
from enhancements.services.processing import enhancement_fail, enhancement_post
from enhancements.triage.services import triage_reject_for_enhancement, triage_release
from tickets.models import Ticket
from tickets.sdp.client import ServiceDeskError

logger = logging.getLogger(__name__)

# An approval whose post never finished (the web process died) can be approved again after this.
APPROVAL_CLAIM_EXPIRES = timedelta(minutes=5)
_POST_FAILED = "Approved, but posting failed; still awaiting review: "


@dataclass(frozen=True)
class ReviewResult:
    """The outcome of a review action: whether it changed anything, the status, and a sentence to show."""

    changed: bool
    status: str
    message: str
    failed: bool = False
    enhancement_id: str = ""


def _reviewable(now: datetime) -> Q:
    return Q(status=Enhancement.Status.AWAITING_REVIEW) & (
        Q(reviewed_at__isnull=True) | Q(reviewed_at__lt=now - APPROVAL_CLAIM_EXPIRES)
    )


def _label(enhancement: Enhancement) -> str:
    return Enhancement.Status(enhancement.status).label.lower()


def _nothing_done(row: Enhancement, why: str) -> ReviewResult:
    """Return the result of an action that changed nothing: the row's status and why."""
    return ReviewResult(changed=False, status=row.status, message=f"Nothing done: {why}.", enhancement_id=str(row.pk))


def enhancement_approve(*, enhancement_id: str, user: User | None, note_html: str | None = None) -> ReviewResult:
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
        return _nothing_done(row, f"the enhancement is {_label(row)}{who}, not awaiting review")
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
    # Triage writes of a review-required tenant wait for this approval (docs/triage.md).
    triage = triage_release(enhancement_id=str(row.pk), user=user).message
    return ReviewResult(
        changed=True,
        status=Enhancement.Status.POSTED,
        message=f"Approved and posted to SDP request #{row.ticket.sdp_id}." + (f" {triage}" if triage else ""),
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


def enhancement_reject(*, enhancement_id: str, user: User | None) -> ReviewResult:
    """Mark an enhancement awaiting review as rejected (its note is never posted)."""
    now = timezone.now()
    rejected = Enhancement.objects.filter(_reviewable(now), pk=enhancement_id).update(
        status=Enhancement.Status.REJECTED, reviewed_by=user, reviewed_at=now, finished_at=now
    )
    row = Enhancement.objects.get(pk=enhancement_id)
    if not rejected:
        return _nothing_done(row, f"the enhancement is {_label(row)}, not awaiting review")
    triage = " ".join(r.message for r in triage_reject_for_enhancement(enhancement_id=str(row.pk), user=user))
    return ReviewResult(
        changed=True,
        status=row.status,
        message="Rejected: the note will not be posted." + (f" Triage: {triage}" if triage else ""),
        enhancement_id=str(row.pk),
    )


def enhancement_rerun_request(*, enhancement_id: str, user: User | None) -> ReviewResult:
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
            return _nothing_done(active, f"enhancement {active.pk} of this ticket is already {_label(active)}")
        if row.status == Enhancement.Status.AWAITING_REVIEW:
            superseded = Enhancement.objects.filter(_reviewable(now), pk=row.pk).update(
                status=Enhancement.Status.REJECTED,
                reviewed_by=user,
                reviewed_at=now,
                finished_at=now,
                error="Superseded by a re-run.",
            )
            if not superseded:
                return _nothing_done(row, "the enhancement is being approved right now")
        new = enhancement_rerun(enhancement=row)
    return ReviewResult(
        changed=True,
        status=new.status,
        message=f"Re-run queued as enhancement {new.pk}; the earlier one is kept in the history.",
        enhancement_id=str(new.pk),
    )


def enhancement_repost(*, enhancement_id: str, user: User | None) -> ReviewResult:
    """Post the note of an enhancement whose post failed; never post twice."""
    now = timezone.now()
    # Running (with started_at) rather than a new status: if this process dies mid-post, the sweep
    # re-queues the row and the worker finishes the post, checking SDP for the note first.
    claimed = (
        Enhancement.objects.filter(pk=enhancement_id, status=Enhancement.Status.FAILED)
        .exclude(note_html="")
        # No beat: the worker that beat for this row is long gone, and the sweep would take a stale beat for
        # a dead worker and re-queue the row mid-post (a second note). A beatless row waits for STUCK_AFTER.
        .update(status=Enhancement.Status.RUNNING, started_at=now, finished_at=None, heartbeat_at=None, worker="")
    )
    row = Enhancement.objects.select_related("tenant", "ticket").get(pk=enhancement_id)
    if not claimed:
        reason = "has no note to post" if not row.note_html else f"is {_label(row)}, not failed"
        return _nothing_done(row, f"the enhancement {reason}")
    try:
        enhancement_post(enhancement=row)
    except ServiceDeskError as exc:
        return _post_failed(row, exc, approving=False)
    except Exception as exc:
        return _post_crashed(row, exc, approving=False)
    Enhancement.objects.filter(pk=row.pk).update(error="")
    # An approval whose post failed held them.
    triage = triage_release(enhancement_id=str(row.pk), user=user).message
    return ReviewResult(
        changed=True,
        status=Enhancement.Status.POSTED,
        message=f"Re-posted to SDP request #{row.ticket.sdp_id}." + (f" {triage}" if triage else ""),
        enhancement_id=str(row.pk),
    )
