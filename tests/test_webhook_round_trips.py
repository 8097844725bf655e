"""The webhook's round trips: the queue push leaves the request thread, and the store is its own health check."""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import redis
from django.conf import settings
from django.db import connection
from django_q.brokers import get_broker
from django_q.signals import pre_enqueue
from django_q.signing import SignedPackage

from enhancements.models import Enhancement
from enhancements.services.pipeline import TASK_PROCESS
from project.errors import DB_RETRY_AFTER_SECONDS
from tests.fakes.fixtures import servicedesk_fixture
from tests.signing import sign_webhook_meta
from tickets.models import Ticket
from tickets.sdp.mapping import ticket_fields_from_sdp

CREATED = servicedesk_fixture("webhook__request_created")
needs_postgres_and_redis = pytest.mark.skipif(
    connection.vendor != "postgresql" or not settings.REDIS_URL,
    reason="the one-statement store and the Redis broker are the PostgreSQL + Redis run's",
)


def _wait(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# --- through the webhook ----------------------------------------------------------------------------------
@pytest.fixture
def pushed_from() -> Iterator[list[str]]:
    """Record the thread each task is pushed from (django_q's pre_enqueue signal)."""
    names: list[str] = []

    def record(sender: Any, task: dict[str, Any], **kwargs: Any) -> None:
        names.append(threading.current_thread().name)

    pre_enqueue.connect(record)
    yield names
    pre_enqueue.disconnect(record)


def _wsgi_post(
    path: str, body: bytes, headers: dict[str, str], answer_headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """POST through project.wsgi as gunicorn calls it: the request cycle's connection handling included (the test
    client leaves close_old_connections out). The answer's headers go into answer_headers if given."""
    from project.wsgi import application

    environ = {
        "REQUEST_METHOD": "POST", "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "127.0.0.1",
        "REMOTE_ADDR": "127.0.0.1", "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
        "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False, **headers,
    }  # fmt: skip
    status: list[str] = []

    def start_response(line: str, sent: list[tuple[str, str]], _exc: Any = None) -> None:
        status.append(line)
        if answer_headers is not None:
            answer_headers.update(sent)

    result = application(environ, start_response)
    content = b"".join(result)
    result.close()
    return int(status[0].split()[0]), json.loads(content)


def _created(sdp_id: str, secret: str, answer_headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    body = json.dumps({**CREATED, "request": {**CREATED["request"], "id": sdp_id}}).encode()
    signed = sign_webhook_meta(secret, body, msg_id=f"m-{sdp_id}")
    return _wsgi_post("/webhook/servicedesk/acme/", body, signed, answer_headers)


@needs_postgres_and_redis
@pytest.mark.django_db(transaction=True)
def test_webhooks_are_pushed_by_the_pusher_thread_as_the_packages_the_cluster_reads(make_tenant, pushed_from):
    secret = make_tenant("acme").secret
    broker = get_broker()
    broker.delete_queue()
    answers = [_created(f"93{n}", secret) for n in range(5)]
    assert [status for status, _ in answers] == [202] * 5
    expected = [(TASK_PROCESS, (body["enhancement_id"],)) for _, body in answers]
    queued = redis.Redis.from_url(settings.REDIS_URL)

    def tasks() -> list[tuple[str, tuple[str, ...]]]:
        return [(t["func"], t["args"]) for t in map(SignedPackage.loads, queued.lrange(broker.list_key, 0, -1))]

    _wait(lambda: tasks() == expected, 10, "the five tasks in the broker, in order")
    assert set(pushed_from) == {"enhancement-pusher"}  # never from the request thread


@needs_postgres_and_redis
@pytest.mark.django_db(transaction=True)
def test_a_kept_connection_the_server_dropped_is_replaced_and_the_webhook_stored_once(make_tenant, caplog):
    secret = make_tenant("acme").secret
    assert _created("941", secret)[0] == 202  # the tenant is cached; the connection is kept (CONN_MAX_AGE)
    connection.ensure_connection()
    backend = connection.connection.info.backend_pid
    dsn = connection.connection.info.dsn
    with psycopg.connect(dsn, autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [backend])
        _wait(
            lambda: not other.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [backend]).fetchone(),
            10,
            "the backend to exit",
        )
    # No SELECT 1 before the store: the store itself finds the connection dead and runs once more on a new one.
    status, body = _created("942", secret)
    assert status == 202, body
    assert "kept database connection was dead" in caplog.text
    assert Ticket.objects.filter(sdp_id="942").count() == 1
    assert Enhancement.objects.filter(ticket__sdp_id="942").count() == 1


@needs_postgres_and_redis
@pytest.mark.django_db(transaction=True)
def test_a_store_the_server_cancels_on_a_live_connection_runs_once_and_the_webhook_answers_503(make_tenant, caplog):
    """Only a lost connection is worth a second attempt: a lock wait the server gave up (a migration holding the
    table, say) leaves the connection alive, and running the store again would only wait again."""
    secret = make_tenant("acme").secret
    options = connection.settings_dict["OPTIONS"]
    saved = dict(options)
    connection.close()
    options["options"] = "-c lock_timeout=200"  # every connection opened from here gives up a lock wait at 0.2 s
    stores: list[str] = []

    def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if sql.startswith("WITH g AS"):
            stores.append(sql)
        return execute(sql, params, many, context)

    answer: dict[str, str] = {}
    try:
        assert _created("961", secret)[0] == 202  # the tenant is cached; the connection is kept (CONN_MAX_AGE)
        connection.ensure_connection()
        backend = connection.connection.info.backend_pid
        with psycopg.connect(connection.connection.info.dsn) as other:  # a transaction, holding the lock
            other.execute(f"LOCK TABLE {Ticket._meta.db_table} IN EXCLUSIVE MODE")
            with connection.execute_wrapper(count):
                status, body = _created("962", secret, answer)
            other.rollback()
        after = connection.connection.info.backend_pid
    finally:
        options.clear()
        options.update(saved)
        connection.close()
    assert status == 503, body
    assert body["error"] == "unavailable" and answer["Retry-After"] == str(DB_RETRY_AFTER_SECONDS)
    assert len(stores) == 1  # sent once, not once more on a new connection
    assert after == backend  # the same live connection throughout
    assert "kept database connection was dead" not in caplog.text
    (failure,) = [r for r in caplog.records if r.getMessage() == "database unavailable while handling a webhook"]
    assert failure.exc_info and getattr(failure.exc_info[1].__cause__, "sqlstate", None) == "55P03"  # lock timeout
    assert not Ticket.objects.filter(sdp_id="962").exists()


# --- constant defaults as literals ------------------------------------------------------------------------
@needs_postgres_and_redis
@pytest.mark.django_db(transaction=True)
def test_constant_defaults_written_as_literals_store_what_the_orm_stores(make_tenant):
    secret = make_tenant("acme").secret
    status, body = _created("951", secret)
    assert status == 202
    fast = Enhancement.objects.get(pk=body["enhancement_id"])
    orm = Enhancement.objects.create(tenant=fast.tenant, ticket=fast.ticket, trigger=Enhancement.Trigger.RERUN)
    skip = {"id", "ticket", "trigger", "delivery_id", "request_id", "enqueued_at", "created_at"}
    names = [f.attname for f in Enhancement._meta.concrete_fields if f.name not in skip]
    orm.refresh_from_db()
    assert {n: getattr(fast, n) for n in names} == {n: getattr(orm, n) for n in names}
    # The ticket's defaults too: the webhook's row against one the ORM makes from the same fields.
    ticket = Ticket.objects.get(pk=fast.ticket_id)
    twin = Ticket.objects.create(
        tenant=ticket.tenant,
        sdp_id="951-orm",
        source=ticket.source,
        raw=ticket.raw,
        **ticket_fields_from_sdp(ticket.raw),
    )
    twin.refresh_from_db()
    skip = {"id", "sdp_id", "created_at", "updated_at", "search_document"}
    names = [f.attname for f in Ticket._meta.concrete_fields if f.name not in skip]
    assert {n: getattr(ticket, n) for n in names} == {n: getattr(twin, n) for n in names}


@needs_postgres_and_redis
@pytest.mark.django_db(transaction=True)
def test_the_store_sends_only_what_varies_as_parameters(make_tenant):
    secret = make_tenant("acme").secret
    assert _created("952", secret)[0] == 202  # the tenant is cached from here on
    seen: list[tuple[str, Any]] = []

    def record(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        seen.append((sql, params))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        assert _created("953", secret)[0] == 202
    ((sql, params),) = [(sql, params) for sql, params in seen if sql.startswith("WITH g AS")]
    assert "'queued'" in sql and "'{}'::jsonb" in sql  # the constant defaults are literals
    # The cached tenant's 6 guard values, the ticket's given fields, the enhancement's id and given fields (39 + 6
    # before the literals).
    assert len(params) == 28


@needs_postgres_and_redis
@pytest.mark.django_db
def test_an_inlined_literal_keeps_quotes_and_percent_signs_and_the_other_values_stay_parameters():
    from enhancements.webhook_fastpath import _store_cursor, _values_inlined
    from enhancements.webhook_rows import inlinable as _inlinable

    assert not _inlinable("a \\ b")  # a backslash is never inlined (its meaning depends on the server's settings)
    assert _inlinable("it's 50%") and _inlinable(0) and _inlinable(False)
    text, params = _values_inlined("SELECT %s, %s, %s", ["it's 50%", "kept", None], (True, False, False))
    assert params == ["kept"] and text == "SELECT 'it''s 50%%', %s, NULL"
    with _store_cursor() as cursor:  # the store's own (preparing) cursor
        cursor.execute(text, params)
        assert cursor.fetchone() == ("it's 50%", "kept", None)
