"""The webhook's hot path: plain checks agree with the serializer, and the one-statement store keeps every answer."""

from __future__ import annotations

import copy
import json

import pytest
from django.conf import settings
from django.db import connection

from enhancements.models import Enhancement
from enhancements.webhook_fastpath import plainly_valid
from tests.fakes.fixtures import SERVICEDESK_FIXTURES, servicedesk_fixture
from tickets.models import Tenant, Ticket
from tickets.sdp.schema import WebhookSerializer

CREATED = servicedesk_fixture("webhook__request_created")


def _variants() -> list[object]:
    bodies: list[object] = [json.loads(p.read_text()) for p in sorted(SERVICEDESK_FIXTURES.glob("webhook__*.json"))]
    base = copy.deepcopy(CREATED)
    edits = [
        ("event", " request_created"), ("event", ""), ("event", None), ("event", "x" * 64), ("event", "x" * 65),
        ("event", 5), ("delivery_id", ""), ("delivery_id", None), ("delivery_id", " d"), ("delivery_id", "d" * 201),
        ("delivery_id", 12), ("request", None), ("request", []), ("request", {}),
    ]  # fmt: skip
    for key, value in edits:
        bodies.append({**base, key: value})
    request_edits = [
        ("id", 12345), ("id", True), ("id", " 12"), ("id", "a" * 33), ("id", "a b"), ("id", None), ("id", 1.5),
        ("subject", None), ("subject", 5), ("subject", ["x"]), ("subject", "bad\x00nul"), ("subject", "  spaced  "),
        ("description", {"a": 1}), ("priority", {"name": " High"}), ("priority", {"name": "x" * 501}),
        ("priority", {"name": 3}), ("priority", "High"), ("priority", None), ("priority", {"other": 1}),
        ("requester", {"email_id": "e" * 255}), ("requester", {"name": "", "email_id": None}),
        ("created_time", {"value": "12a"}), ("created_time", {"value": 1764150000000}), ("created_time", {"value": ""}),
        ("created_time", {"value": "1" * 16}), ("resolution", {"content": "  kept  "}), ("resolution", {"content": 1}),
        ("resolution", "text"), ("technician", []), ("status", {"name": None}),
    ]  # fmt: skip
    for key, value in request_edits:
        body = copy.deepcopy(base)
        body["request"][key] = value
        bodies.append(body)
    return bodies


@pytest.mark.parametrize("body", _variants(), ids=lambda b: json.dumps(b)[:60])
def test_plain_checks_accept_only_what_the_serializer_accepts_with_the_same_values(body):
    fast = plainly_valid(body) if isinstance(body, dict) else None
    serializer = WebhookSerializer(data=body)
    if fast is None:
        return  # the serializer decides: the view then answers exactly what it answered before
    assert serializer.is_valid(), (body, serializer.errors)
    data = serializer.validated_data
    assert fast["event"] == data["event"]
    assert fast.get("delivery_id") == data.get("delivery_id")
    assert fast["request"]["id"] == data["request"]["id"]


def test_the_common_body_takes_the_plain_path():
    fast = plainly_valid(CREATED)
    assert fast is not None and fast["request"] == {"id": str(CREATED["request"]["id"])}
    assert (fast["event"], fast["delivery_id"]) == (CREATED["event"], CREATED["delivery_id"])


needs_postgres = pytest.mark.skipif(connection.vendor != "postgresql", reason="the one-statement store is PostgreSQL's")


@needs_postgres
@pytest.mark.django_db(transaction=True)
def test_one_statement_store_answers_like_the_transaction(make_tenant, post_webhook, django_assert_num_queries):
    result = make_tenant("acme")
    Tenant.objects.filter(slug="acme").update(rate_limit_per_minute=0)
    # Outside a transaction (as gunicorn serves it): the tenant SELECT and one INSERT ... INSERT statement
    # (plus the ORM broker's task INSERT when there is no Redis).
    with django_assert_num_queries(2 if settings.REDIS_URL else 3):
        first = post_webhook("acme", CREATED, secret=result.secret, msg_id="msg-1")
    assert first.status_code == 202
    row = Enhancement.objects.select_related("ticket").get(pk=first.json()["enhancement_id"])
    assert (row.status, row.delivery_id, row.ticket.sdp_id) == ("queued", "msg-1", str(CREATED["request"]["id"]))
    assert row.ticket.subject and row.ticket.raw["id"] == CREATED["request"]["id"] and row.enqueued_at
    assert row.request_id  # the webhook's request id, as the ORM path records it

    # The same request again (SDP retries with a new delivery id): the ORM path answers duplicate.
    again = post_webhook("acme", CREATED, secret=result.secret, msg_id="msg-2")
    assert (again.status_code, again.json()) == (200, {"status": "duplicate", "enhancement_id": str(row.pk)})
    # A reused delivery id for another request: the statement fails whole, nothing of it is kept.
    other = {**CREATED, "request": {**CREATED["request"], "id": "777001"}}
    reused = post_webhook("acme", other, secret=result.secret, msg_id="msg-1")
    assert (reused.status_code, reused.json()["status"]) == (200, "duplicate")
    assert not Ticket.objects.filter(sdp_id="777001").exists()
    assert Enhancement.objects.count() == 1 and Ticket.objects.count() == 1
