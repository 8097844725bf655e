"""Triage services: decide per field, write to SDP without overwriting a person, undo, and measure acceptance.

Rules (each has a test in tests/test_triage_*.py):
- A field in `off` gets nothing; in `suggest` its suggestion is recorded and shown (note, admin), never written.
- In `apply` it is written only when the value is in the tenant's SDP list, the confidence reaches the field's
  threshold (the offline vote needs a fitted calibration), and the field is empty or still at the tenant's
  default — checked on the request read from SDP just before the PUT.
- Every write records the previous value and the reason; the PUT carries an update reason naming Ticket
  Enhancer. The decision is marked before the call, so after an unclear outcome the next attempt reads the
  request first: our value there means done (no second write), a person's value means leave it.
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
from django.db.models import F, Q
from django.utils import timezone
from django.utils.html import format_html

from enhancements.llm import LLMError, provider_name
from enhancements.triage.calibration import Calibrator, calibrator_for
from enhancements.triage.choices import Choices, choices_for
from enhancements.triage.engine import Neighbour, Suggestion, neighbours_find, ticket_final_fields, votes_all
from enhancements.triage.models import TriageDecision, TriageField, TriageMode, TriageSetting
from project.retry import backoff_delay
from tickets.models import Tenant, Ticket
from tickets.sdp.auth import servicedesk_client
from tickets.sdp.client import ServiceDeskError

logger = logging.getLogger(__name__)

Outcome = TriageDecision.Outcome
DEFAULT_THRESHOLD = 0.9
MAX_WRITE_ATTEMPTS = 5
TASK_APPLY = "enhancements.triage.tasks.apply_decisions"
# The SDP request key of each field.
SDP_KEYS = {"category": "category", "subcategory": "subcategory", "priority": "priority", "group": "group",
            "technician": "technician"}  # fmt: skip


# --- settings ---------------------------------------------------------------------------------------------------
def triage_settings(*, tenant: Tenant) -> dict[str, TriageSetting]:
    """Return the tenant's setting of every field (unsaved defaults, `suggest`, where none is stored)."""
    stored = {s.field: s for s in TriageSetting.objects.filter(tenant=tenant)}
    return {
        name: stored.get(name) or TriageSetting(tenant=tenant, field=name, threshold=DEFAULT_THRESHOLD)
        for name in TriageField.values
    }


def triage_setting_update(
    *,
    tenant: Tenant,
    field: str,
    mode: str | None = None,
    threshold: float | None = None,
    default_value: str | None = None,
) -> TriageSetting:
    """Create or change one field's setting; raises ValueError on an unknown field, mode or threshold."""
    if field not in TriageField.values:
        raise ValueError(f"field must be one of {', '.join(TriageField.values)}")
    if mode is not None and mode not in TriageMode.values:
        raise ValueError(f"mode must be one of {', '.join(TriageMode.values)}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError("threshold must be between 0 and 1")
    setting, _ = TriageSetting.objects.get_or_create(
        tenant=tenant, field=field, defaults={"threshold": DEFAULT_THRESHOLD}
    )
    for name, value in (("mode", mode), ("threshold", threshold), ("default_value", default_value)):
        if value is not None:
            setattr(setting, name, value)
    setting.save()
    return setting


# --- suggestions ------------------------------------------------------------------------------------------------
@dataclass
class TriageResult:
    """The suggestions for a ticket, by field (calibrated), and which provider made them."""

    suggestions: dict[str, Suggestion]
    provider: str
    model: str
    fallback_reason: str = ""


def triage_suggest(
    *,
    tenant: Tenant,
    ticket: Ticket,
    choices: Choices | None = None,
    neighbours: list[Neighbour] | None = None,
    priority_cues: dict[str, float] | None = None,
    use_llm: bool | None = None,
) -> TriageResult:
    """Return the ticket's triage suggestions: from the LLM when configured (enums of the tenant's lists), else
    (or when it fails) the calibrated neighbour vote. `priority_cues` adds urgency votes (priority name -> weight).
    """
    choices = choices if choices is not None else choices_for(tenant=tenant)
    neighbours = neighbours if neighbours is not None else neighbours_find(tenant=tenant, ticket=ticket)
    fallback = ""
    if use_llm is None:
        use_llm = provider_name() == "openai"
    if use_llm:
        from enhancements.triage.llm import llm_triage

        try:
            suggestions = llm_triage(tenant=tenant, ticket=ticket, neighbours=neighbours, choices=choices)
            model = next(iter(suggestions.values())).model if suggestions else tenant.llm_model or settings.OPENAI_MODEL
            return TriageResult(suggestions=suggestions, provider="openai", model=model)
        except LLMError as exc:
            logger.warning("triage LLM failed, using the neighbour vote: %s", exc)
            fallback = str(exc)
    votes = votes_all(
        neighbours=neighbours,
        allowed=choices.allowed(),
        priority_cues=priority_cues,
        subcategories_of=choices.subcategories_of if choices.has("subcategory") else None,
    )
    cache_: dict[str, Calibrator] = {}
    for name, suggestion in votes.items():
        suggestion.confidence = calibrator_for(tenant=tenant, field=name, cache=cache_)(suggestion.raw_score)
    return TriageResult(suggestions=votes, provider="offline", model="neighbour-vote-v1", fallback_reason=fallback)


# --- decisions --------------------------------------------------------------------------------------------------
def _is_unset(value: str, setting: TriageSetting) -> bool:
    return not value or (bool(setting.default_value) and value.lower() == setting.default_value.lower())


def _decide(
    *,
    field: str,
    suggestion: Suggestion,
    setting: TriageSetting,
    choices: Choices,
    seen: str,
    tenant: Tenant,
    trusted: bool,
) -> tuple[str, str]:
    """Return (outcome, reason) for one field at decision time."""
    confidence = suggestion.confidence or 0.0
    if setting.mode == TriageMode.SUGGEST:
        return Outcome.SUGGESTED, "Suggest mode: shown in the note and the admin, not written."
    if not choices.has(field):
        return Outcome.NOT_IN_LIST, "The tenant's SDP list is not cached yet (refresh the SDP lists)."
    if not choices.allows(field, suggestion.value):
        return Outcome.NOT_IN_LIST, f"“{suggestion.value}” is not in the tenant's SDP list; never written."
    if not trusted:
        return Outcome.LOW_CONFIDENCE, "No calibration fitted on this tenant's history yet (run triage_report)."
    if confidence < setting.threshold:
        return Outcome.LOW_CONFIDENCE, f"Confidence {confidence:.0%} is below the threshold {setting.threshold:.0%}."
    if not _is_unset(seen, setting):
        return Outcome.HUMAN_SET, f"Left alone: the request already had “{seen}”."
    if not tenant.has_sdp_credentials:
        return Outcome.SUGGESTED, "Would be written, but the tenant has no SDP credentials (dry run)."
    return Outcome.PENDING, f"Confidence {confidence:.0%} ≥ threshold {setting.threshold:.0%}; field unset."


def triage_decide(
    *,
    enhancement: Any,
    ticket: Ticket | None = None,
    priority_cues: dict[str, float] | None = None,
    use_llm: bool | None = None,
) -> list[TriageDecision]:
    """Record a decision for every field not `off`; return them (pending ones await triage_apply).

    Safe to run twice for the same enhancement: the decisions are updated, not duplicated, and a field already
    written is not decided again.
    """
    tenant = enhancement.tenant
    ticket = ticket or enhancement.ticket
    settings_ = triage_settings(tenant=tenant)
    active = [name for name, setting in settings_.items() if setting.mode != TriageMode.OFF]
    if not active:
        return []
    choices = choices_for(tenant=tenant)
    result = triage_suggest(tenant=tenant, ticket=ticket, choices=choices, priority_cues=priority_cues, use_llm=use_llm)
    seen = ticket_final_fields(ticket)
    decisions: list[TriageDecision] = []
    for name in active:
        suggestion = result.suggestions.get(name)
        if suggestion is None:
            continue
        setting = settings_[name]
        trusted = suggestion.provider != "offline" or calibrator_for(tenant=tenant, field=name).trusted
        outcome, reason = _decide(
            field=name, suggestion=suggestion, setting=setting, choices=choices, seen=seen.get(name, ""),
            tenant=tenant, trusted=trusted,
        )  # fmt: skip
        if result.fallback_reason:
            reason += f" (LLM unavailable, neighbour vote used: {result.fallback_reason[:200]})"
        values: dict[str, Any] = {
            "tenant": tenant,
            "ticket": ticket,
            "value": suggestion.value,
            "confidence": suggestion.confidence,
            "raw_score": suggestion.raw_score,
            "provider": suggestion.provider,
            "model": suggestion.model,
            "mode": setting.mode,
            "threshold": setting.threshold,
            "outcome": outcome,
            "reason": reason,
            "seen_value": seen.get(name, "")[:200],
        }
        if name == TriageField.CATEGORY and (sub := result.suggestions.get("subcategory")):
            values |= {"subvalue": sub.value, "sub_confidence": sub.confidence}
        existing = TriageDecision.objects.filter(enhancement=enhancement, field=name).first()
        if existing and (existing.write_started_at or existing.outcome in (Outcome.APPLIED, Outcome.UNDONE)):
            decisions.append(existing)  # a write is (or may be) in SDP: its record stands
            continue
        decision, _ = TriageDecision.objects.update_or_create(enhancement=enhancement, field=name, defaults=values)
        decisions.append(decision)
    return decisions


def urgency_votes(output: dict[str, Any]) -> dict[str, float]:
    """Return the urgency cues of the output (enhancements/urgency.py) as a vote for the priority they imply.

    The vote weighs as much as one very similar resolved ticket: cues move a close call, not a clear history.
    """
    from enhancements.urgency import priority_with_urgency

    cues = output.get("urgency_cues") or []
    if not cues:
        return {}
    floor, _ = priority_with_urgency("", cues)
    return {floor: 1.0} if floor else {}


def triage_for_enhancement(*, enhancement: Any, ticket: Ticket, output: dict[str, Any]) -> list[TriageDecision]:
    """Decide the ticket's triage inside the pipeline, put it in the note's output, and queue the writes.

    Triage never fails an enhancement: an unexpected error is logged and the note goes out without it.
    """
    try:
        decisions = triage_decide(enhancement=enhancement, ticket=ticket, priority_cues=urgency_votes(output))
    except Exception:
        logger.exception("triage failed; the note is posted without it")
        return []
    by_field = {d.field: d for d in decisions}
    if category := by_field.get(TriageField.CATEGORY):
        output["category_suggestion"] = (
            f"{category.value} / {category.subvalue}" if category.subvalue else category.value
        )
    if (priority := by_field.get(TriageField.PRIORITY)) and not output.get("priority_reason"):
        output["priority_suggestion"] = priority.value  # a priority raised by urgency cues keeps its reason
    output["triage"] = [
        {
            "field": d.field,
            "label": d.get_field_display(),
            "value": f"{d.value} / {d.subvalue}" if d.subvalue else d.value,
            "confidence": d.confidence,
            "outcome": d.outcome,
        }
        for d in decisions
    ]
    if any(d.outcome == Outcome.PENDING for d in decisions):
        triage_enqueue_apply(enhancement_id=str(enhancement.pk))
    return decisions


def triage_enqueue_apply(*, enhancement_id: str) -> None:
    """Hand the enhancement's pending writes to the task queue (the sweep catches a lost task)."""
    from django_q.tasks import async_task

    try:
        async_task(TASK_APPLY, str(enhancement_id), task_name=f"triage-{enhancement_id}")
    except Exception:
        logger.exception("could not enqueue the triage writes of %s; the sweep will pick them up", enhancement_id)


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
    settings_ = triage_settings(tenant=tenant)
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
                        and (decision.sub_confidence or 0) >= (decision.threshold or DEFAULT_THRESHOLD)
                        and choices.allows("subcategory", decision.subvalue, category=decision.value)
                        and not _current(request, "subcategory")
                    )
                    if sub_ok:
                        changes["subcategory"] = _ref(choices, "subcategory", decision.subvalue, decision.value)
                to_write.append(decision)
            if not to_write:
                return counts
            # Record the attempt before the call: a crash or timeout leaves rows that say a write was in flight.
            TriageDecision.objects.filter(pk__in=[d.pk for d in to_write]).update(write_started_at=now)
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


# --- acceptance -------------------------------------------------------------------------------------------------
def triage_acceptance_record(*, ticket: Ticket) -> int:
    """Compare a resolved ticket's final fields with what we suggested or wrote; return decisions evaluated."""
    if not ticket.is_resolved:
        return 0
    final = ticket_final_fields(ticket)
    now = timezone.now()
    count = 0
    for decision in TriageDecision.objects.filter(ticket=ticket, evaluated_at__isnull=True):
        value = final.get(decision.field, "")
        right = bool(value) and value == decision.value
        if decision.outcome == Outcome.APPLIED:
            acceptance = TriageDecision.Acceptance.KEPT if right else TriageDecision.Acceptance.CHANGED
        elif decision.outcome == Outcome.UNDONE:
            acceptance = TriageDecision.Acceptance.CHANGED
        else:
            acceptance = TriageDecision.Acceptance.NEVER_APPLIED
        decision.final_value = value[:200]
        decision.final_subvalue = final.get("subcategory", "")[:200] if decision.field == "category" else ""
        decision.acceptance = acceptance
        decision.correct = right if value else None
        decision.evaluated_at = now
        decision.save(update_fields=["final_value", "final_subvalue", "acceptance", "correct", "evaluated_at"])
        count += 1
    return count


def triage_acceptance_sweep(*, limit: int = 500) -> int:
    """Evaluate decisions whose ticket was resolved since (imports and webhooks); return how many tickets."""
    ids = (
        TriageDecision.objects.filter(evaluated_at__isnull=True, ticket__is_resolved=True)
        .order_by()
        .values_list("ticket_id", flat=True)
        .distinct()[:limit]
    )
    done = 0
    for ticket in Ticket.objects.filter(pk__in=list(ids)):
        triage_acceptance_record(ticket=ticket)
        done += 1
    return done
