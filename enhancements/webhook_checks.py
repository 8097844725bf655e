"""The webhook's plain checks: the common, plainly valid body without DRF's nested serializers.

`plainly_valid` accepts only bodies that tickets.sdp.schema.WebhookSerializer certainly accepts too, with the same
event, delivery id and request id; anything else (a field of another type, whitespace DRF would trim, a value near
a limit) returns None and the serializer decides, so every 400 and its `fields` are DRF's, unchanged. It costs a
few microseconds where the nested serializers cost about a millisecond (docs/benchmarks.md, "Webhook load").
"""

from __future__ import annotations

import re
from typing import Any

_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_TIME = re.compile(r"\d{1,15}")
# DRF's CharField refuses NUL and lone surrogates.
_UNCLEAN = re.compile("[\x00\ud800-\udfff]")
_NAMED = ("priority", "status", "category", "technician", "requester")
_TIMES = ("created_time", "resolved_time", "completed_time")


def _clean_str(value: Any, limit: int | None = None) -> bool:
    return (
        isinstance(value, str)
        and (limit is None or len(value) <= limit)
        and value == value.strip()
        and not _UNCLEAN.search(value)
    )


def _text(value: Any) -> bool:
    # subject and description keep their whitespace (trim_whitespace=False).
    return value is None or (isinstance(value, str) and not _UNCLEAN.search(value))


def _object(value: Any, checks: dict[str, Any]) -> bool:
    if value is None:
        return True
    if not isinstance(value, dict):
        return False
    return all(check(value[key]) for key, check in checks.items() if key in value)


def _name(limit: int) -> Any:
    return lambda value: value is None or value == "" or _clean_str(value, limit)


_CHECKS: dict[str, dict[str, Any]] = {
    **{field: {"name": _name(500)} for field in _NAMED},
    "requester": {"name": _name(500), "email_id": _name(254)},
    **{
        field: {"value": lambda v: v is None or v == "" or (isinstance(v, str) and _TIME.fullmatch(v))}
        for field in _TIMES
    },
    "resolution": {"content": _text},
}


def plainly_valid(payload: dict[str, Any]) -> dict[str, Any] | None:
    """Return the validated event, delivery_id and request id, or None to let the serializer decide."""
    event = payload.get("event", "request_created")
    if not (_clean_str(event, 64) and event):
        return None
    delivery_id = payload.get("delivery_id")
    if delivery_id is not None and not _clean_str(delivery_id, 200):
        return None
    request = payload.get("request")
    if not isinstance(request, dict):
        return None
    request_id = request.get("id")
    if isinstance(request_id, int) and not isinstance(request_id, bool):
        request_id = str(request_id)
    if not (isinstance(request_id, str) and _REQUEST_ID.fullmatch(request_id)):
        return None
    if not (_text(request.get("subject")) and _text(request.get("description"))):
        return None
    if not all(_object(request[key], checks) for key, checks in _CHECKS.items() if key in request):
        return None
    data: dict[str, Any] = {"event": event, "request": {"id": request_id}}
    if "delivery_id" in payload:
        data["delivery_id"] = delivery_id
    return data
