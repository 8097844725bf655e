"""Template helpers for the triage pages and the dashboard's triage panel."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django import template

from enhancements.triage.dashboard import tenant_triage_rows
from tickets.models import Tenant

register = template.Library()


@register.filter
def get_item(mapping: dict[str, Any], key: str) -> Any:
    """Return mapping[key] or None."""
    return mapping.get(key) if isinstance(mapping, dict) else None


@register.filter
def pct(value: float | None) -> str:
    """Return a share as a whole percentage, or a dash."""
    return "—" if value is None else f"{value:.0%}"


@register.inclusion_tag("admin/enhancements/triage_panel.html")
def triage_panel(tenant: Tenant | None, since: datetime) -> dict[str, Any]:
    """Render the dashboard's per-tenant triage, helpful-rate and review-edit table."""
    return {
        "rows": tenant_triage_rows(tenant=tenant, since=since),
        "fields": ["category", "priority", "group", "technician"],
    }
