"""The webhook's hot path: plain checks for the common, plainly valid body, and one SQL statement to store it.

`plainly_valid` accepts only bodies that tickets.sdp.schema.WebhookSerializer certainly accepts too, with the same
event, delivery id and request id; anything else (a field of another type, whitespace DRF would trim, a value near
a limit) returns None and the serializer decides, so every 400 and its `fields` are DRF's, unchanged. It costs a
few microseconds where the nested serializers cost about a millisecond (docs/benchmarks.md, "Webhook load").

`store_new_ticket` stores a new ticket and its queued enhancement in one INSERT ... INSERT statement on
PostgreSQL (CTEs, one round trip, atomic on its own) instead of a transaction of four statements. The SQL comes
from Django's own insert compiler for both models, so every column and default is the model's. It answers None
when the ticket already exists, and the ORM path decides what that means.
"""

from __future__ import annotations

import re
from typing import Any

from django.db import connection
from django.db.models import sql

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


def _insert(obj: Any) -> tuple[str, list[Any], list[str]]:
    """Return Django's INSERT for one instance: the SQL, its parameters and the column names, in order."""
    fields = [f for f in type(obj)._meta.local_concrete_fields if not f.db_returning]
    query = sql.InsertQuery(type(obj))
    query.insert_values(fields, [obj])
    ((text, params),) = query.get_compiler(connection=connection).as_sql()
    return text, list(params), [f.column for f in fields]


def store_new_ticket(*, ticket: Any, enhancement: Any) -> str | None:
    """Insert a new ticket and its enhancement in one statement; return the enhancement id, or None if the ticket
    exists. Raises IntegrityError like the ORM path (a reused delivery id)."""
    ticket_sql, ticket_params, _ = _insert(ticket)
    enhancement_sql, enhancement_params, columns = _insert(enhancement)
    head, sep, values = enhancement_sql.partition(" VALUES (")
    placeholders = values.removesuffix(")").split(", ")
    if not sep or len(placeholders) != len(columns) or "ticket_id" not in columns:
        return None  # not the single-row shape expected: the ORM path stores it
    at = columns.index("ticket_id")
    placeholders[at] = "t.id"
    del enhancement_params[at]
    qn = connection.ops.quote_name
    # Only Django-compiled SQL and quoted names are joined here; every value is a parameter.
    ticket_cte = f"WITH t AS ({ticket_sql} ON CONFLICT DO NOTHING RETURNING {qn('id')} AS id), "
    enhancement_cte = f"e AS ({head} SELECT {', '.join(placeholders)} FROM t RETURNING {qn('id')}) "  # noqa: S608
    statement = ticket_cte + enhancement_cte + f"SELECT {qn('id')} FROM e"  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(statement, [*ticket_params, *enhancement_params])
        row = cursor.fetchone()
    return str(row[0]) if row else None
