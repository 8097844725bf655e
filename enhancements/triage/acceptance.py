"""Triage acceptance: when a triaged ticket is resolved, was what we suggested or wrote kept?"""

from __future__ import annotations

from django.utils import timezone

from enhancements.triage.engine import ticket_final_fields
from enhancements.triage.models import TriageDecision
from enhancements.triage.writes import Outcome
from tickets.models import Ticket


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
