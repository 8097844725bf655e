"""Triage decisions: the per-tenant settings, the suggestions, and what to do with each field.

Rules (each has a test in tests/test_triage*.py):
- A field in `off` gets nothing; in `suggest` its suggestion is recorded and shown (note, admin), never written.
- In `apply` it is written only when the value is in the tenant's SDP list, the confidence reaches the field's
  threshold (the offline vote needs a fitted calibration), and the field is empty or still at the tenant's
  default — checked on the request read from SDP just before the PUT (enhancements/triage/writes.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from enhancements.llm import LLMError, provider_name
from enhancements.llm_budget import BudgetExhausted
from enhancements.triage.calibration import Calibrator, calibration_key, calibrator_for
from enhancements.triage.choices import Choices, choices_for
from enhancements.triage.engine import Neighbour, Suggestion, neighbours_find, ticket_final_fields, votes_all
from enhancements.triage.models import TriageDecision, TriageField, TriageMode, TriageSetting
from tickets.ai_budget import llm_budget_check
from tickets.models import Tenant, Ticket

logger = logging.getLogger(__name__)

Outcome = TriageDecision.Outcome
DEFAULT_THRESHOLD = 0.9
TASK_APPLY = "enhancements.triage.tasks.apply_decisions"


# --- settings ---------------------------------------------------------------------------------------------------
def triage_settings_list(*, tenant: Tenant) -> dict[str, TriageSetting]:
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
    if use_llm and (spent := llm_budget_check(tenant=tenant)):
        use_llm, fallback = False, f"AI budget for today reached: {spent}"
    if use_llm:
        from enhancements.triage.llm import llm_triage

        try:
            suggestions = llm_triage(tenant=tenant, ticket=ticket, neighbours=neighbours, choices=choices)
            # The model's own confidence is mapped like the vote's: by a fit on this tenant's history
            # (triage_report --llm); unfitted, it stays raw and never gates a write (see _decide).
            llm_cache: dict[str, Calibrator] = {}
            for name, suggestion in suggestions.items():
                key = calibration_key(name, "openai")
                suggestion.confidence = calibrator_for(tenant=tenant, field=key, cache=llm_cache)(suggestion.raw_score)
            model = next(iter(suggestions.values())).model if suggestions else tenant.llm_model or settings.OPENAI_MODEL
            return TriageResult(suggestions=suggestions, provider="openai", model=model)
        except (LLMError, BudgetExhausted) as exc:
            # A full shared budget does not hold the note back for triage: the vote answers at once.
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
        if suggestion.provider != "offline":
            why = "The LLM's confidence is not calibrated on this tenant's history yet (run triage_report --llm)."
            return Outcome.LOW_CONFIDENCE, why
        return Outcome.LOW_CONFIDENCE, "No calibration fitted on this tenant's history yet (run triage_report)."
    if confidence < setting.threshold:
        return Outcome.LOW_CONFIDENCE, f"Confidence {confidence:.0%} is below the threshold {setting.threshold:.0%}."
    if not _is_unset(seen, setting):
        return Outcome.HUMAN_SET, f"Left alone: the request already had “{seen}”."
    if not tenant.has_sdp_credentials:
        return Outcome.SUGGESTED, "Would be written, but the tenant has no SDP credentials (dry run)."
    why = f"Confidence {confidence:.0%} ≥ threshold {setting.threshold:.0%}; field unset."
    if tenant.review_required:
        # Nothing reaches SDP before a lead approves the note; the request is read again then.
        return Outcome.AWAITING_REVIEW, f"{why} Written when a lead approves the note (the tenant requires review)."
    return Outcome.PENDING, why


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
    settings_ = triage_settings_list(tenant=tenant)
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
        trusted = calibrator_for(tenant=tenant, field=calibration_key(name, suggestion.provider)).trusted
        outcome, reason = _decide(
            field=name, suggestion=suggestion, setting=setting, choices=choices, seen=seen.get(name, ""),
            tenant=tenant, trusted=trusted,
        )  # fmt: skip
        if result.fallback_reason:
            why = "" if result.fallback_reason.startswith("AI budget") else "LLM unavailable, "
            reason += f" ({why}neighbour vote used: {result.fallback_reason[:200]})"
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


def urgency_votes(*, output: dict[str, Any]) -> dict[str, float]:
    """Return the urgency cues of the output (enhancements/urgency.py) as a vote for the priority they imply.

    The vote weighs as much as one very similar resolved ticket: cues move a close call, not a clear history.
    """
    from enhancements.urgency import priority_with_urgency

    cues = output.get("urgency_cues") or []
    if not cues:
        return {}
    floor, _ = priority_with_urgency("", cues)
    return {floor: 1.0} if floor else {}


def triage_run_for_enhancement(*, enhancement: Any, ticket: Ticket, output: dict[str, Any]) -> list[TriageDecision]:
    """Decide the ticket's triage inside the pipeline, put it in the note's output, and queue the writes.

    Triage never fails an enhancement: an unexpected error is logged and the note goes out without it.
    """
    try:
        decisions = triage_decide(enhancement=enhancement, ticket=ticket, priority_cues=urgency_votes(output=output))
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
