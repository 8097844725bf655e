"""The webhook's hot path: plain checks agree with the serializer, and the one-statement store keeps every answer."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from enhancements import webhook_fastpath, webhook_rows
from enhancements.models import Enhancement
from enhancements.webhook_checks import plainly_valid
from tests.fakes.fixtures import SERVICEDESK_FIXTURES, servicedesk_fixture
from tickets.models import Tenant, Ticket
from tickets.sdp.schema import WebhookSerializer
from tickets.services import webhook_secret_generate
from tickets.storable import json_loads_checked, storable_json
from tickets.tenant_cache import tenant_cached

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


@needs_postgres
@pytest.mark.django_db(transaction=True)
def test_the_store_is_prepared_once_per_connection(make_tenant, post_webhook):
    result = make_tenant("acme")
    for number, sdp_id in enumerate(("901", "902", "903")):
        assert post_webhook("acme", _created(sdp_id), secret=result.secret, msg_id=f"p{number}").status_code == 202
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements WHERE statement LIKE 'WITH g AS %%'")
        prepared = cursor.fetchall()
    # Three webhooks on one connection: one statement parsed and planned once, run three times.
    assert len(prepared) == 1 and "INSERT INTO" in prepared[0][0]
    assert Ticket.objects.filter(sdp_id__in=["901", "902", "903"]).count() == 3


@needs_postgres
@pytest.mark.django_db(transaction=True)
def test_a_prepared_statement_the_server_lost_is_stored_unprepared(make_tenant, post_webhook, monkeypatch, caplog):
    monkeypatch.setattr(webhook_fastpath, "_PREPARING", [True])
    result = make_tenant("acme")
    # The first call reads the tenant, the second stores through the cached one's guard: both statements prepared.
    for number in (1, 2):
        assert (
            post_webhook("acme", _created(f"91{number}"), secret=result.secret, msg_id=f"q{number}").status_code == 202
        )
    # What a transaction-mode pooler does to a prepared statement: the next server connection never saw it.
    connection.ensure_connection()
    connection.connection.pgconn.exec_(b"DEALLOCATE ALL")
    third = post_webhook("acme", _created("913"), secret=result.secret, msg_id="q3")
    assert third.status_code == 202
    assert Enhancement.objects.get(pk=third.json()["enhancement_id"]).ticket.sdp_id == "913"
    assert "prepared statement lost" in caplog.text
    assert post_webhook("acme", _created("914"), secret=result.secret, msg_id="q4").status_code == 202
    assert Ticket.objects.filter(sdp_id__startswith="91").count() == 4


@needs_postgres
@pytest.mark.django_db(transaction=True)
def test_a_statement_name_another_client_prepared_on_the_server_session_is_stored_unprepared(
    make_tenant, post_webhook, monkeypatch, caplog
):
    # Before: 42P05 (duplicate_prepared_statement) was re-raised and the webhook answered 503, again after
    # every reconnect.
    monkeypatch.setattr(webhook_fastpath, "_PREPARING", [True])
    result = make_tenant("acme")
    connection.ensure_connection()
    # A transaction-mode pooler hands this client a server session on which another client (psycopg too, whose
    # names are _pg3_0, _pg3_1, ... on every connection) already prepared its first statements.
    for number in range(4):
        connection.connection.pgconn.exec_(f"PREPARE _pg3_{number} AS SELECT 1".encode())
    answer = post_webhook("acme", _created("921"), secret=result.secret, msg_id="r1")
    assert answer.status_code == 202, answer.content
    assert Ticket.objects.filter(sdp_id="921").count() == 1
    assert "prepared statement lost" in caplog.text or not webhook_fastpath._PREPARING[0]


def _created(sdp_id: str) -> dict[str, object]:
    return {**CREATED, "request": {**CREATED["request"], "id": sdp_id}}


@needs_postgres
@pytest.mark.django_db(transaction=True)
def test_a_tenant_disabled_elsewhere_is_refused_at_once_despite_the_cache(make_tenant, post_webhook):
    result = make_tenant("acme")
    assert post_webhook("acme", _created("801"), secret=result.secret, msg_id="m1").status_code == 202
    assert tenant_cached(slug="acme") is not None  # the next call starts from the cached tenant
    # Another process (admin, a script) changes the row: nothing tells this process's cache.
    Tenant.objects.filter(slug="acme").update(enabled=False)
    refused = post_webhook("acme", _created("802"), secret=result.secret, msg_id="m2")
    assert (refused.status_code, refused.json()["error"]) == (403, "tenant_disabled")
    assert not Ticket.objects.filter(sdp_id="802").exists() and Enhancement.objects.count() == 1


@needs_postgres
@pytest.mark.django_db(transaction=True)
def test_a_secret_rotated_elsewhere_works_at_once_and_the_old_one_stops(make_tenant, post_webhook):
    result = make_tenant("acme")
    assert post_webhook("acme", _created("811"), secret=result.secret, msg_id="m1").status_code == 202
    assert tenant_cached(slug="acme") is not None
    new_secret = webhook_secret_generate(auth=Tenant.WebhookAuth.HMAC)
    Tenant.objects.filter(slug="acme").update(webhook_secret=new_secret)  # encrypted by the field
    old = post_webhook("acme", _created("812"), secret=result.secret, msg_id="m2")
    assert (old.status_code, old.json()["error"]) == (401, "invalid_signature")
    assert post_webhook("acme", _created("813"), secret=new_secret, msg_id="m3").status_code == 202
    assert sorted(Ticket.objects.values_list("sdp_id", flat=True)) == ["811", "813"]


@needs_postgres
@pytest.mark.django_db(transaction=True)
def test_a_tenant_recreated_elsewhere_under_the_same_slug_is_read_again(make_tenant, post_webhook):
    first = make_tenant("acme")
    assert post_webhook("acme", _created("821"), secret=first.secret, msg_id="m1").status_code == 202
    assert tenant_cached(slug="acme") is not None
    # Deleted and created again by another process: this process's cache still holds the old row.
    Tenant.objects.filter(slug="acme").delete()
    new_secret = webhook_secret_generate(auth=Tenant.WebhookAuth.HMAC)
    new = Tenant.objects.create(slug="acme", name="Acme", webhook_secret=new_secret)
    assert post_webhook("acme", _created("822"), secret=first.secret, msg_id="m2").status_code == 401
    answer = post_webhook("acme", _created("823"), secret=new_secret, msg_id="m3")
    assert answer.status_code == 202
    assert Enhancement.objects.get(pk=answer.json()["enhancement_id"]).tenant_id == new.pk


@needs_postgres
@pytest.mark.django_db(transaction=True)
def test_a_limit_lowered_elsewhere_applies_at_once_and_each_call_is_counted_once(make_tenant, post_webhook):
    result = make_tenant("acme", rate_limit_per_minute=100)
    assert post_webhook("acme", _created("831"), secret=result.secret, msg_id="m1").status_code == 202  # count 1
    assert tenant_cached(slug="acme") is not None
    Tenant.objects.filter(slug="acme").update(rate_limit_per_minute=3)
    # The next call is counted with the cached tenant, then answered from the row read again: counted once.
    answers = [
        post_webhook("acme", _created(f"83{n}"), secret=result.secret, msg_id=f"r{n}").status_code for n in range(2, 5)
    ]
    assert answers == [202, 202, 429]


UNSTORABLE_TEXTS = [
    rb'{"a": "nul\u0000"}', rb'{"a": "\ud800"}', rb'{"a": "\uDFFF x"}', rb'{"a": "\ud83d\ude00"}', b'{"a": NaN}',
    b'{"a": -Infinity}', b'{"a": 1e400}', b'{"a": -1E+999}', b'{"a": ' + b"9" * 400 + b'.5}', b"[" * 40 + b"]" * 40,
    b'{"a": 1.5, "b": [1e10, 0.0]}', rb'{"a": "\\u0000 escaped backslash"}', b'{"a": "plain \\"quoted\\""}',
]  # fmt: skip


@pytest.mark.parametrize("text", UNSTORABLE_TEXTS, ids=lambda t: t[:40].decode(errors="replace"))
def test_the_plain_storable_check_never_skips_what_the_full_walk_would_change_or_refuse(text):
    payload, plain = json_loads_checked(text)
    if not plain:
        return  # the full walk decides, as before
    assert storable_json(copy.deepcopy(payload)) == payload


def test_the_common_body_skips_the_walk_and_hostile_numbers_do_not():
    assert json_loads_checked(json.dumps(CREATED).encode())[1]
    assert not json_loads_checked(b'{"a": 1e400}')[1] and not json_loads_checked(rb'{"a": "\u0000"}')[1]


def _same_param(field: object, ours: object, django: object) -> bool:
    if hasattr(django, "obj") and hasattr(django, "dumps"):  # psycopg's Jsonb, with Django's encoder
        return type(ours) is type(django) and ours.obj == django.obj and ours.dumps == django.dumps  # type: ignore[attr-defined]
    if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False) or field.name == "id":  # type: ignore[attr-defined]
        # timezone.now() and uuid4(): a fresh value each time, of the same type and kind.
        if isinstance(django, datetime):
            return (
                isinstance(ours, datetime)
                and ours.tzinfo == django.tzinfo
                and abs(ours - django) < timedelta(seconds=60)
            )
        return type(ours) is type(django) and len(str(ours)) == len(str(django))
    return type(ours) is type(django) and ours == django


_ROWS = [
    CREATED["request"],
    servicedesk_fixture("webhook__request_created_minimal")["request"],
    {
        "id": "7",
        "subject": "Écran noir — 画面が真っ暗 🙈",
        "description": "<p>naïve <b>ünïcode</b></p>",
        "x": [1.5, None],
    },
    {"id": "8", "subject": None, "description": None, "priority": None, "requester": {"name": "", "email_id": None}},
    {"id": "9", "created_time": {"value": "1700000000000"}, "resolved_time": {"value": ""}, "deep": {"a": {"b": [{}]}}},
]


@pytest.mark.django_db
@pytest.mark.parametrize("request_body", _ROWS)
@pytest.mark.parametrize("delivery_id", [None, "msg_2ZkP", "ü-id"])
@pytest.mark.parametrize("capped", [False, True], ids=["kept", "past-the-cap"])
def test_the_store_parameters_are_the_ones_django_prepares(tenant, request_body, delivery_id, capped, monkeypatch):
    """The store builds its parameters without model instances; they must be exactly Django's for the same row.
    Past the shape caches' cap (here: nothing kept) every shape is worked out again, with the same parameters."""
    from tickets.sdp.mapping import ticket_fields_from_sdp

    if capped:
        monkeypatch.setattr(webhook_rows, "CACHE_MAX", 0)
        monkeypatch.setattr(webhook_rows, "_RECIPES", {})

    rows = [
        (Ticket, {"tenant_id": tenant.tenant.pk, "sdp_id": str(request_body["id"]), "source": Ticket.Source.WEBHOOK,
                  "raw": request_body, **ticket_fields_from_sdp(request_body)}),
        (Enhancement, {"tenant_id": tenant.tenant.pk, "delivery_id": delivery_id, "request_id": "rq-1",
                       "enqueued_at": timezone.now()}),
    ]  # fmt: skip
    for model, values in rows:
        webhook_rows.insert(model(**values))  # the SQL of this shape is compiled
        assert webhook_rows.plain_params(model, values, connection) is not None  # no instance on this path
        sql, params, columns = webhook_rows.plain_insert(model, values, connection)
        django_sql, django_params, django_columns = webhook_rows.insert(model(**values))
        assert (sql, columns) == (django_sql, django_columns)
        fields = webhook_rows.FIELDS[model]
        assert len(params) == len(django_params) == len(fields)
        different = [f.name for f, a, b in zip(fields, params, django_params, strict=True) if not _same_param(f, a, b)]
        assert different == []
    # A row that is not plain (a field given by name with an instance) goes the instance way, with the same result.
    values = {"tenant": tenant.tenant, "sdp_id": "10", "raw": {}}
    assert webhook_rows.plain_params(Ticket, values, connection) is None
    assert webhook_rows.plain_insert(Ticket, values, connection)[2] == webhook_rows.insert(Ticket(**values))[2]
    if capped:
        assert webhook_rows._RECIPES == {}  # nothing kept past the cap
