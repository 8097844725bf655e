"""Django-Q entry points of triage: ids only, each calls one service."""

from __future__ import annotations

from enhancements.triage.choices import choices_refresh_all
from enhancements.triage.services import triage_acceptance_sweep, triage_apply, triage_sweep


def apply_decisions(enhancement_id: str) -> dict[str, int]:
    """Write an enhancement's pending triage decisions to SDP."""
    return triage_apply(enhancement_id=enhancement_id)


def sweep() -> dict[str, int]:
    """Retry due triage writes and evaluate decisions of tickets resolved since."""
    return {"retried": triage_sweep(), "evaluated": triage_acceptance_sweep()}


def refresh_choices() -> dict[str, str]:
    """Refresh every tenant's cached SDP lists."""
    return choices_refresh_all()


def report(tenant_id: int) -> dict:
    """Run a tenant's leave-one-out report and store its calibrations (up to 5000 tickets, spread evenly)."""
    from enhancements.triage.calibration import triage_report_build
    from tickets.models import Tenant

    tenant = Tenant.objects.get(pk=tenant_id)
    result = triage_report_build(tenant=tenant, sample=5000)
    return {"tenant": tenant.slug, "seconds": result["seconds"]}
