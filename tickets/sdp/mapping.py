"""SDP v3 request objects -> Ticket fields, and SDP's epoch-millisecond time objects."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tickets.models import Ticket, field_max_lengths
from tickets.text import html_to_text

_TICKET_LIMITS = field_max_lengths(Ticket)


def sdp_time(value: Any) -> datetime | None:
    """Return the moment of an SDP time object (`{"value": "<epoch ms>", ...}`) or bare epoch ms, else None."""
    raw = value.get("value") if isinstance(value, dict) else value
    try:
        return datetime.fromtimestamp(int(str(raw)) / 1000, tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def sdp_ms(moment: datetime) -> str:
    """Return a moment as the epoch-millisecond string SDP's search criteria take."""
    return str(int(moment.timestamp() * 1000))


def _name(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("name") or "")
    return str(value) if isinstance(value, str) else ""


def _clip(field: str, value: str) -> str:
    limit = _TICKET_LIMITS.get(field)
    return value[:limit] if limit else value


def ticket_fields_from_sdp(request: dict[str, Any]) -> dict[str, Any]:
    """Return Ticket field values for the keys present in an SDP v3 request object."""
    fields: dict[str, Any] = {}
    if "subject" in request:
        fields["subject"] = html_to_text(str(request.get("subject") or ""))
    if "description" in request:
        fields["description"] = html_to_text(str(request.get("description") or ""))
    for key, field in (("status", "status"), ("priority", "priority"), ("category", "category")):
        if key in request:
            fields[field] = _name(request.get(key))
    if "technician" in request:
        fields["technician"] = _name(request.get("technician"))
    if "requester" in request:
        requester = request.get("requester") or {}
        fields["requester_name"] = _name(requester)
        fields["requester_email"] = str(requester.get("email_id") or "") if isinstance(requester, dict) else ""
    if "resolution" in request:
        resolution = request.get("resolution")
        content = resolution.get("content") if isinstance(resolution, dict) else resolution
        fields["resolution"] = html_to_text(str(content or ""))
    if "created_time" in request:
        fields["sdp_created_at"] = sdp_time(request.get("created_time"))
    resolved = request.get("resolved_time") or request.get("completed_time")
    if resolved:
        fields["resolved_at"] = sdp_time(resolved)
    if "status" in fields:
        fields["is_resolved"] = fields["status"] in Ticket.RESOLVED_STATUSES
    return {k: _clip(k, v) if isinstance(v, str) else v for k, v in fields.items()}
