"""Triage writes to SDP: apply pending decisions without overwriting a person, retry, and undo.

- Every write records the previous value and the reason; the PUT carries an update reason naming Ticket
  Enhancer. The decision is marked before the call, so after an unclear outcome the next attempt reads the
  request first: our value there means done (no second write), a person's value means leave it.
- Every attempt, a retry too, reads the field's setting again, as an approval does for held writes: switched off
  means dropped, suggest-only kept as a suggestion, a threshold raised above the confidence not written.
- Undo writes the previous value back (unless a person changed the field since) and adds a note saying so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.cache import cache
from django.db.models import F, Q, Value
from django.db.models.functions import Concat
from django.utils import timezone
from django.utils.html import format_html

from enhancements.triage.choices import Choices, choices_for
from enhancements.triage.decide import _is_unset, triage_enqueue_apply, triage_settings_list
from enhancements.triage.models import TriageDecision, TriageField, TriageMode, TriageSetting
from project.retry import backoff_delay
from tickets.sdp.auth import servicedesk_client
from tickets.sdp.client import ServiceDeskError

logger = logging.getLogger(__name__)

Outcome = TriageDecision.Outcome
MAX_WRITE_ATTEMPTS = 5
# The SDP request key of each field.
SDP_KEYS = {"category": "category", "subcategory": "subcategory", "priority": "priority", "group": "group",
            "technician": "technician"}  # fmt: skip


# --- writing ----------------------------------------------------------------------------------------------------
def _current(request: dict[str, Any], key: str) -> str:
    value = request.get(key)
    if isinstance(value, dict):
        return str(value.get("name") or "").strip()
    return value.strip() if isinstance(value, str) else ""


def _ref(choices: Choices, kind: str, name: str, parent: str = "") -> dict[str, str]:
    sdp_id = choices.ids.get((kind, f"{parent}\x00{name}" if kind == "subcategory" else name))
    return {"id": sdp_id, "name": name} if sdp_id else {"name": name}


def _update_reason(decisions: list[TriageDecision], enhancement_id: str) -> str:
    parts = [f"{d.get_field_display()} “{d.value}” ({(d.confidence or 0):.0%})" for d in decisions]
    return f"Ticket Enhancer triage (ref {enhancement_id}): set {', '.join(parts)}; the field was empty."[:250]


def triage_apply(*, enhancement_id: str) -> dict[str, int]:
    """Write the enhancement's pending decisions to SDP; return counts by resulting outcome.

    Reads the request just before the PUT; only empty or default fields are written, in one PUT.
    """
    lock = f"triage-apply:{enhancement_id}"
    if not cache.add(lock, "1", timeout=120):
        return {"busy": 1}
    try:
        return _apply(enhancement_id)
    finally:
        cache.delete(lock)


def _apply(enhancement_id: str) -> dict[str, int]:
    pending = list(
        TriageDecision.objects.select_related("tenant", "ticket").filter(
            enhancement_id=enhancement_id, outcome=Outcome.PENDING
        )
    )
    counts: dict[str, int] = {}
    if not pending:
        return counts
    TriageDecision.objects.filter(pk__in=[d.pk for d in pending]).update(attempts=F("attempts") + 1)
    tenant, ticket = pending[0].tenant, pending[0].ticket
    settings_ = triage_settings_list(tenant=tenant)
    choices = choices_for(tenant=tenant)
    now = timezone.now()
    to_write: list[TriageDecision] = []
    changes: dict[str, Any] = {}
    try:
        with servicedesk_client(tenant=tenant) as client:
            request = client.get_request(ticket.sdp_id)
            for decision in pending:
                current = _current(request, SDP_KEYS[decision.field])
                if decision.write_started_at and current == decision.value:
                    # An earlier attempt's outcome was unclear and SDP has our value: it landed. No second write.
                    _finish(decision, Outcome.APPLIED, decision.reason, written_at=now)
                    counts[Outcome.APPLIED] = counts.get(Outcome.APPLIED, 0) + 1
                    continue
                if stopped := _setting_now(decision, settings_[decision.field], waiting=_waiting(decision)):
                    # Read again at every attempt, as at approval: a lead may have changed it since triage.
                    outcome, why = stopped
                    if TriageDecision.objects.filter(pk=decision.pk, outcome=Outcome.PENDING).update(
                        outcome=outcome, reason=Concat(F("reason"), Value(f" Then {why}"[:1000]))
                    ):
                        counts[outcome] = counts.get(outcome, 0) + 1
                    continue
                if not _is_unset(current, settings_[decision.field]):
                    why = (
                        f"Left alone: a person set “{current}” while our earlier write's outcome was unclear."
                        if decision.write_started_at
                        else f"Left alone: a person set “{current}” before we wrote."
                    )
                    _finish(decision, Outcome.HUMAN_SET, why, previous=current)
                    counts[Outcome.HUMAN_SET] = counts.get(Outcome.HUMAN_SET, 0) + 1
                    continue
                if not choices.allows(decision.field, decision.value):
                    _finish(decision, Outcome.NOT_IN_LIST, f"“{decision.value}” is no longer in the SDP list.")
                    counts[Outcome.NOT_IN_LIST] = counts.get(Outcome.NOT_IN_LIST, 0) + 1
                    continue
                if not decision.write_started_at:
                    decision.previous_value = current
                    decision.previous_subvalue = _current(request, "subcategory")
                changes[SDP_KEYS[decision.field]] = _ref(choices, decision.field, decision.value)
                if decision.field == TriageField.CATEGORY:
                    sub_ok = (
                        decision.subvalue
                        and (decision.sub_confidence or 0) >= settings_[decision.field].threshold
                        and choices.allows("subcategory", decision.subvalue, category=decision.value)
                        and not _current(request, "subcategory")
                    )
                    if sub_ok:
                        changes["subcategory"] = _ref(choices, "subcategory", decision.subvalue, decision.value)
                to_write.append(decision)
            # Record the attempt before the call: a crash or timeout leaves rows that say a write was in flight.
            # Only a row still pending is claimed: a lead's reject during the GET above wins, its field is not sent.
            claimed = []
            for decision in to_write:
                if TriageDecision.objects.filter(pk=decision.pk, outcome=Outcome.PENDING).update(write_started_at=now):
                    claimed.append(decision)
                else:
                    changes.pop(SDP_KEYS[decision.field], None)
                    if decision.field == TriageField.CATEGORY:
                        changes.pop("subcategory", None)
            to_write = claimed
            if not to_write:
                return counts
            for decision in to_write:
                decision.write_started_at = now
                decision.save(update_fields=["previous_value", "previous_subvalue"])
            client.update_request(ticket.sdp_id, changes, reason=_update_reason(to_write, enhancement_id))
    except ServiceDeskError as exc:
        return _write_failed(to_write or pending, exc, counts)
    for decision in to_write:
        wrote_sub = decision.field == TriageField.CATEGORY and "subcategory" in changes
        reason = decision.reason + (f" Subcategory “{decision.subvalue}” written too." if wrote_sub else "")
        _finish(decision, Outcome.APPLIED, reason, written_at=timezone.now())
        counts[Outcome.APPLIED] = counts.get(Outcome.APPLIED, 0) + 1
    logger.info("triage wrote %s to SDP request %s", ", ".join(changes), ticket.sdp_id)
    return counts


def _finish(
    decision: TriageDecision, outcome: str, reason: str, *, written_at: Any = None, previous: str | None = None
) -> None:
    decision.outcome = outcome
    decision.reason = reason[:2000]
    fields = ["outcome", "reason"]
    if written_at is not None:
        decision.written_at = written_at
        fields.append("written_at")
    if previous is not None:
        decision.previous_value = previous[:200]
        fields.append("previous_value")
    decision.save(update_fields=fields)


def _write_failed(decisions: list[TriageDecision], exc: ServiceDeskError, counts: dict[str, int]) -> dict[str, int]:
    for decision in decisions:
        decision.refresh_from_db(fields=["attempts"])
        if exc.permanent or decision.attempts >= MAX_WRITE_ATTEMPTS:
            _finish(decision, Outcome.FAILED, f"Not written: ServiceDesk Plus: {exc}")
            counts[Outcome.FAILED] = counts.get(Outcome.FAILED, 0) + 1
        else:
            delay = max(
                backoff_delay(max(decision.attempts, 1), base=settings.ENHANCEMENT_RETRY_BASE,
                              cap=settings.ENHANCEMENT_RETRY_MAX),
                exc.retry_after or 0.0,
            )  # fmt: skip
            decision.next_attempt_at = timezone.now() + timedelta(seconds=delay)
            decision.reason = f"Attempt {decision.attempts or 1} failed, will retry: ServiceDesk Plus: {exc}"[:2000]
            decision.save(update_fields=["next_attempt_at", "reason"])
            counts["retry"] = counts.get("retry", 0) + 1
    return counts


def triage_sweep(*, limit: int = 200) -> int:
    """Retry pending writes that are due (lost tasks, transient failures); return how many enhancements ran."""
    now = timezone.now()
    stale = now - timedelta(seconds=60)
    due = (
        TriageDecision.objects.filter(outcome=Outcome.PENDING, created_at__lt=stale)
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .order_by()
        .values_list("enhancement_id", flat=True)
        .distinct()[:limit]
    )
    ran = 0
    for enhancement_id in list(due):
        triage_apply(enhancement_id=str(enhancement_id))
        ran += 1
    return ran


# --- undo -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UndoResult:
    """What an undo did, in a sentence for the admin."""

    undone: bool
    message: str


def triage_undo(*, decision_id: int, user: AbstractBaseUser | None) -> UndoResult:
    """Write the previous value back (unless a person changed the field since) and add a note saying so."""
    decision = TriageDecision.objects.select_related("tenant", "ticket").get(pk=decision_id)
    label = decision.get_field_display()
    if decision.outcome != Outcome.APPLIED:
        return UndoResult(False, f"Nothing undone: {label} of #{decision.ticket.sdp_id} was not written by us.")
    tenant, ticket = decision.tenant, decision.ticket
    key = SDP_KEYS[decision.field]
    choices = choices_for(tenant=tenant)
    who = getattr(user, "get_username", lambda: "")() or "a support lead"
    try:
        with servicedesk_client(tenant=tenant) as client:
            request = client.get_request(ticket.sdp_id)
            current = _current(request, key)
            if current != decision.value:
                return UndoResult(
                    False,
                    f"Not undone: {label} of #{ticket.sdp_id} is now “{current or 'empty'}”, changed since our write "
                    "(a person's value is never overwritten).",
                )
            previous = decision.previous_value
            changes: dict[str, Any] = {key: _ref(choices, decision.field, previous) if previous else None}
            if decision.field == TriageField.CATEGORY:
                wrote_sub = _current(request, "subcategory") == decision.subvalue and decision.subvalue
                if wrote_sub:
                    prev_sub = decision.previous_subvalue
                    changes["subcategory"] = (
                        _ref(choices, "subcategory", prev_sub, previous) if prev_sub and previous else None
                    )
            reason = f"Ticket Enhancer: undo of its triage change (ref {decision.enhancement_id}) by {who}."
            client.update_request(ticket.sdp_id, changes, reason=reason[:250])
            now = timezone.now()
            TriageDecision.objects.filter(pk=decision.pk).update(
                outcome=Outcome.UNDONE, undone_at=now, undone_by=user if user and user.pk else None
            )
            note = format_html(
                "<p><b>Ticket Enhancer</b>: {} undid the automatic change of <b>{}</b> from “{}” back to “{}”.</p>",
                who,
                label,
                decision.value,
                previous or "empty",
            )
            created = client.add_note(ticket.sdp_id, str(note))
    except ServiceDeskError as exc:
        return UndoResult(False, f"Not undone: ServiceDesk Plus: {exc}")
    TriageDecision.objects.filter(pk=decision.pk).update(undo_note_id=str(created.get("id", "")))
    return UndoResult(
        True, f"Undone: {label} of #{ticket.sdp_id} is “{previous or 'empty'}” again; a note in SDP says so."
    )


# --- review: held writes, and a lead's reject --------------------------------------------------------------------
def _who(user: AbstractBaseUser | None) -> str:
    return getattr(user, "get_username", lambda: "")() or "a support lead"


@dataclass(frozen=True)
class ReleaseResult:
    """What an approval did to the held triage writes: how many were queued, and why the others were not."""

    queued: int
    not_written: list[str]  # one sentence a field whose setting changed while the note waited

    @property
    def message(self) -> str:
        """Return the sentences for the lead, "" when nothing was held."""
        queued = f"{self.queued} triage field(s) are being written." if self.queued else ""
        return " ".join(filter(None, [queued, *self.not_written]))


def _waiting(decision: TriageDecision) -> str:
    return "the write waited for its retry" if decision.attempts else "the write waited to be sent"


def _setting_now(
    decision: TriageDecision, setting: TriageSetting, *, waiting: str = "the note waited for review"
) -> tuple[str, str] | None:
    """Return (outcome, why) when the field's current setting no longer lets the write go; None if it does."""
    if setting.mode == TriageMode.OFF:
        return Outcome.REJECTED, f"not written: its triage was switched off while {waiting}."
    if setting.mode == TriageMode.SUGGEST:
        return Outcome.SUGGESTED, f"kept as a suggestion, not written: it was switched to suggest-only while {waiting}."
    confidence = decision.confidence or 0.0
    if confidence < setting.threshold:
        return Outcome.LOW_CONFIDENCE, (
            f"not written: its confidence {confidence:.0%} is below the threshold {setting.threshold:.0%} set "
            f"while {waiting}."
        )
    return None


def triage_release(*, enhancement_id: str, user: AbstractBaseUser | None) -> ReleaseResult:
    """Queue the writes held until the lead approved the note (review-required tenants); say what was queued.

    Each field's current setting is read again: a field a lead switched off or to suggest-only (or whose
    threshold rose above the confidence) while the note waited is not written. The apply task reads the request
    again first, so a field a person set since triage is still left alone.
    """
    held = list(
        TriageDecision.objects.select_related("tenant").filter(
            enhancement_id=enhancement_id, outcome=Outcome.AWAITING_REVIEW
        )
    )
    if not held:
        return ReleaseResult(0, [])
    settings_ = triage_settings_list(tenant=held[0].tenant)
    who = _who(user)
    release, not_written = [], []
    for decision in held:
        stopped = _setting_now(decision, settings_[decision.field])
        if stopped is None:
            release.append(decision.pk)
            continue
        outcome, why = stopped
        # Only a decision still held: a reject (or another approval) that came first stands.
        if TriageDecision.objects.filter(pk=decision.pk, outcome=Outcome.AWAITING_REVIEW).update(
            outcome=outcome, reason=Concat(F("reason"), Value(f" Approved by {who}, but {why}"[:1000]))
        ):
            not_written.append(f"{decision.get_field_display()} {why}")
    released = TriageDecision.objects.filter(pk__in=release, outcome=Outcome.AWAITING_REVIEW).update(
        outcome=Outcome.PENDING, reason=Concat(F("reason"), Value(f" Approved by {who}."))
    )
    if released:
        triage_enqueue_apply(enhancement_id=str(enhancement_id))
    return ReleaseResult(released, not_written)


def triage_decision_reject(*, decision_id: int, user: AbstractBaseUser | None) -> UndoResult:
    """Reject one triage decision: a write not sent yet is dropped; one we wrote is undone (triage_undo).

    The undo writes the previous value back only while SDP still holds our value: a technician's later change
    is never overwritten (the result says so).
    """
    decision = TriageDecision.objects.select_related("ticket").get(pk=decision_id)
    label, sdp_id = decision.get_field_display(), decision.ticket.sdp_id
    if decision.outcome == Outcome.APPLIED:
        return triage_undo(decision_id=decision_id, user=user)
    # Not yet written (held for review, or pending with no PUT started): nothing reaches SDP.
    dropped = (
        TriageDecision.objects.filter(pk=decision_id, write_started_at__isnull=True)
        .filter(outcome__in=(Outcome.AWAITING_REVIEW, Outcome.PENDING, Outcome.SUGGESTED, Outcome.LOW_CONFIDENCE))
        .update(outcome=Outcome.REJECTED, reason=f"Rejected by {_who(user)}: not written."[:2000])
    )
    if dropped:
        return UndoResult(True, f"Rejected: {label} of #{sdp_id} will not be written.")
    decision.refresh_from_db()
    return UndoResult(False, f"Nothing rejected: {label} of #{sdp_id} is {decision.get_outcome_display().lower()}.")


def triage_reject_for_enhancement(*, enhancement_id: str, user: AbstractBaseUser | None) -> list[UndoResult]:
    """The lead rejected the note: reject its triage too (held writes dropped, written ones undone)."""
    decisions = TriageDecision.objects.filter(
        enhancement_id=enhancement_id, outcome__in=(Outcome.AWAITING_REVIEW, Outcome.PENDING, Outcome.APPLIED)
    ).values_list("pk", flat=True)
    return [triage_decision_reject(decision_id=pk, user=user) for pk in list(decisions)]
