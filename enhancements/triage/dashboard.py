"""What the admin shows about triage: history accuracy, acceptance in use, the dry run, and review edits."""

from __future__ import annotations

import difflib
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db.models import Count, Q
from django.utils.html import strip_tags

from enhancements.models import Enhancement, Feedback
from enhancements.render import note_render
from enhancements.triage.calibration import calibrator_for
from enhancements.triage.choices import choices_for
from enhancements.triage.decide import _is_unset, triage_settings_list
from enhancements.triage.engine import ticket_final_fields
from enhancements.triage.models import TriageCalibration, TriageDecision, TriageField, TriageMode
from tickets.models import Tenant

A = TriageDecision.Acceptance
EDITED_BELOW = 0.98  # text similarity under which a reviewed note counts as edited


# --- leave-one-out, at the tenant's thresholds -----------------------------------------------------------------
def history_accuracy(*, tenant: Tenant) -> dict[str, dict[str, Any]]:
    """Return per field the stored leave-one-out figures at the field's current threshold (and the advice)."""
    settings_ = triage_settings_list(tenant=tenant)
    reports = {c.field: c for c in TriageCalibration.objects.filter(tenant=tenant)}
    result: dict[str, dict[str, Any]] = {}
    for name in [*TriageField.values, "subcategory"]:
        row = reports.get(name)
        setting = settings_["category" if name == "subcategory" else name]
        if row is None or not row.report:
            result[name] = {"fitted": False, "threshold": setting.threshold}
            continue
        rows = row.report.get("thresholds", [])
        # The report's rows are fixed thresholds; use the highest one at or below the field's threshold.
        at = [r for r in rows if r["threshold"] <= setting.threshold + 1e-9]
        chosen = at[-1] if at else (rows[0] if rows else {})
        result[name] = {
            "fitted": True,
            "threshold": setting.threshold,
            "report_threshold": chosen.get("threshold"),
            "accuracy": chosen.get("accuracy"),
            "coverage": chosen.get("coverage"),
            "accuracy_all": row.report.get("accuracy_all"),
            "advised": row.report.get("advised_threshold"),
            "tickets": row.report.get("tickets"),
            "fitted_at": row.fitted_at,
            "rows": rows,
            "calibration": row.report.get("calibration", []),
        }
    return result


# --- acceptance in use -----------------------------------------------------------------------------------------
@dataclass
class AcceptanceRow:
    """Acceptance of one field by one provider/model: kept, changed by a person, never applied."""

    field: str
    provider: str
    model: str
    kept: int = 0
    changed: int = 0
    never_applied: int = 0
    right: int = 0
    judged: int = 0

    @property
    def applied(self) -> int:
        """Return how many writes were judged."""
        return self.kept + self.changed

    @property
    def kept_rate(self) -> float | None:
        """Return kept / applied."""
        return self.kept / self.applied if self.applied else None

    @property
    def accuracy(self) -> float | None:
        """Return how often the suggestion equalled the final value (written or not)."""
        return self.right / self.judged if self.judged else None


def acceptance_rows(*, tenant: Tenant | None, since: datetime) -> list[AcceptanceRow]:
    """Return acceptance per field, provider and model of decisions evaluated since `since`."""
    scope = TriageDecision.objects.filter(evaluated_at__gte=since)
    if tenant is not None:
        scope = scope.filter(tenant=tenant)
    rows = (
        scope.values("field", "provider", "model")
        .annotate(
            kept=Count("id", filter=Q(acceptance=A.KEPT)),
            changed=Count("id", filter=Q(acceptance=A.CHANGED)),
            never=Count("id", filter=Q(acceptance=A.NEVER_APPLIED)),
            right=Count("id", filter=Q(correct=True)),
            judged=Count("id", filter=Q(correct__isnull=False)),
        )
        .order_by("field", "provider", "model")
    )
    return [
        AcceptanceRow(
            field=r["field"],
            provider=r["provider"],
            model=r["model"],
            kept=r["kept"],
            changed=r["changed"],
            never_applied=r["never"],
            right=r["right"],
            judged=r["judged"],
        )  # fmt: skip
        for r in rows
    ]


# --- notes edited in review ------------------------------------------------------------------------------------
_SPACE = re.compile(r"\s+")


def _text(html: str) -> str:
    return _SPACE.sub(" ", strip_tags(html or "")).strip()


@dataclass
class ReviewEdits:
    """How many reviewed notes a lead edited before they went out, and by how much (share of text changed)."""

    reviewed: int = 0
    edited: int = 0
    changed_share_sum: float = 0.0

    @property
    def edited_rate(self) -> float | None:
        """Return edited / reviewed."""
        return self.edited / self.reviewed if self.reviewed else None

    @property
    def mean_change(self) -> float | None:
        """Return the mean share of the text changed in the edited notes."""
        return self.changed_share_sum / self.edited if self.edited else None


def review_edits(*, tenant: Tenant | None, since: datetime, limit: int = 500) -> ReviewEdits:
    """Return review-edit figures: each approved note against the note as generated (re-rendered from its output)."""
    scope = Enhancement.objects.filter(
        reviewed_at__gte=since, status__in=(Enhancement.Status.POSTED, Enhancement.Status.COMPLETED)
    ).exclude(note_html="")
    if tenant is not None:
        scope = scope.filter(tenant=tenant)
    result = ReviewEdits()
    for row in scope.select_related("tenant").order_by("-reviewed_at")[:limit]:
        if not row.output:
            continue
        generated = note_render(
            tenant=row.tenant,
            enhancement_id=str(row.pk),
            output=row.output,
            context=row.context or {},
            provider=row.provider,
            model=row.model,
            fallback_reason="yes" if row.error.startswith("LLM unavailable") else "",
        )
        ratio = difflib.SequenceMatcher(None, _text(generated).split(), _text(row.note_html).split()).ratio()
        result.reviewed += 1
        if ratio < EDITED_BELOW:
            result.edited += 1
            result.changed_share_sum += 1 - ratio
    return result


# --- per tenant, for the dashboard -----------------------------------------------------------------------------
@dataclass
class TenantTriage:
    """One dashboard row: a tenant's helpful rate, review edits, and triage per field."""

    tenant: Tenant
    helpful_rate: float | None
    rated: int
    edits: ReviewEdits
    history: dict[str, dict[str, Any]]
    acceptance: dict[str, AcceptanceRow] = field(default_factory=dict)
    modes: dict[str, str] = field(default_factory=dict)


def tenant_triage_rows(*, tenant: Tenant | None, since: datetime) -> list[TenantTriage]:
    """Return the dashboard's triage rows: the selected tenant, or every tenant."""
    tenants = [tenant] if tenant is not None else list(Tenant.objects.order_by("name")[:50])
    rows = []
    for item in tenants:
        ratings = Feedback.objects.filter(created_at__gte=since, enhancement__tenant=item).aggregate(
            total=Count("id"), helpful=Count("id", filter=Q(rating=Feedback.Rating.HELPFUL))
        )
        by_field: dict[str, AcceptanceRow] = {}
        for row in acceptance_rows(tenant=item, since=since):
            total = by_field.setdefault(row.field, AcceptanceRow(field=row.field, provider="all", model="all"))
            for name in ("kept", "changed", "never_applied", "right", "judged"):
                setattr(total, name, getattr(total, name) + getattr(row, name))
        rows.append(
            TenantTriage(
                tenant=item,
                helpful_rate=ratings["helpful"] / ratings["total"] if ratings["total"] else None,
                rated=ratings["total"],
                edits=review_edits(tenant=item, since=since),
                history=history_accuracy(tenant=item),
                acceptance=by_field,
                modes={name: s.mode for name, s in triage_settings_list(tenant=item).items()},
            )
        )
    return rows


# --- the dry run -----------------------------------------------------------------------------------------------
@dataclass
class DryRunCell:
    """One field of one recent ticket: the suggestion, whether apply would have written it, and if it was right."""

    value: str
    confidence: float | None
    would_apply: bool
    why_not: str
    outcome: str
    final: str
    right: bool | None


def dry_run(
    *, tenant: Tenant, limit: int = 50, thresholds: dict[str, float] | None = None
) -> tuple[list[tuple[Any, dict[str, DryRunCell]]], dict[str, dict[str, int]]]:
    """Return what `apply` would have done on the tenant's recent triaged tickets, and totals per field.

    `thresholds` overrides the stored ones, so a lead can try a value before saving it.
    """
    settings_ = triage_settings_list(tenant=tenant)
    choices = choices_for(tenant=tenant)
    trusted = {name: calibrator_for(tenant=tenant, field=name).trusted for name in TriageField.values}
    enhancement_ids = list(
        TriageDecision.objects.filter(tenant=tenant)
        .order_by("-created_at")
        .values_list("enhancement_id", flat=True)
        .distinct()[: limit * 5]
    )
    seen_ids: list[Any] = []
    for pk in enhancement_ids:
        if pk not in seen_ids:
            seen_ids.append(pk)
    seen_ids = seen_ids[:limit]
    decisions: dict[Any, dict[str, TriageDecision]] = defaultdict(dict)
    for d in TriageDecision.objects.filter(enhancement_id__in=seen_ids).select_related("ticket"):
        decisions[d.enhancement_id][d.field] = d
    totals: dict[str, dict[str, int]] = {
        name: {"would_apply": 0, "right": 0, "judged": 0, "suggested": 0} for name in TriageField.values
    }
    rows = []
    for pk in seen_ids:
        by_field = decisions.get(pk) or {}
        if not by_field:
            continue
        ticket = next(iter(by_field.values())).ticket
        final = ticket_final_fields(ticket) if ticket.is_resolved else {}
        cells: dict[str, DryRunCell] = {}
        for name, d in by_field.items():
            setting = settings_[name]
            threshold = (thresholds or {}).get(name, setting.threshold)
            confidence = d.confidence or 0.0
            why = ""
            if not choices.allows(name, d.value):
                why = "not in the SDP list"
            elif d.provider == "offline" and not trusted.get(name):
                why = "not calibrated yet"
            elif confidence < threshold:
                why = f"below {threshold:.0%}"
            elif not _is_unset(d.seen_value, setting):
                why = f"already “{d.seen_value}”"
            right = (final.get(name) == d.value) if final.get(name) else None
            cells[name] = DryRunCell(
                value=d.value, confidence=d.confidence, would_apply=not why, why_not=why,
                outcome=d.get_outcome_display(), final=final.get(name, ""), right=right,
            )  # fmt: skip
            totals[name]["suggested"] += 1
            if not why:
                totals[name]["would_apply"] += 1
                if right is not None:
                    totals[name]["judged"] += 1
                    totals[name]["right"] += int(right)
        rows.append((ticket, cells))
    return rows, totals


MODES = dict(TriageMode.choices)
