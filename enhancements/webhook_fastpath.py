"""The webhook's hot path: one SQL statement to store a new ticket and its queued enhancement.

`store_new_ticket` stores a new ticket and its queued enhancement in one INSERT ... INSERT statement on
PostgreSQL (CTEs, one round trip, atomic on its own) instead of a transaction of four statements. The SQL comes
from Django's own insert compiler for both models, so every column and default is the model's. It answers None
when the ticket already exists, and the ORM path decides what that means. (The plain checks of the common body
are enhancements/webhook_checks.py.)
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from django.db import DEFAULT_DB_ALIAS, OperationalError, ProgrammingError, connection, connections

from enhancements.webhook_rows import defaulted as _defaulted
from enhancements.webhook_rows import literal as _literal
from enhancements.webhook_rows import plain_insert as _plain_insert
from enhancements.webhook_rows import remember
from tickets.models import Tenant

logger = logging.getLogger(__name__)


_STATEMENTS: dict[tuple[Any, ...], str] = {}  # per process: the store's statement per shape of its two rows
# Per shape of a store (the names given for both rows, the guard's length, the alias): the parameters it inlines.
_SHAPE_DEFAULTED: dict[tuple[Any, ...], tuple[bool, ...]] = {}


class StaleTenant(Exception):
    """The cached tenant no longer matches its row (or the store took another path): look it up again."""


def _statement(ticket_sql: str, enhancement_sql: str, columns: list[str], guard: list[str] | None) -> str | None:
    """Return the INSERT ... INSERT statement (None if the INSERTs are not the expected single-row shape)."""
    key = (ticket_sql, enhancement_sql, tuple(guard) if guard is not None else None)
    if key in _STATEMENTS:
        return _STATEMENTS[key]
    head, sep, values = enhancement_sql.partition(" VALUES (")
    placeholders = values.removesuffix(")").split(", ")
    ticket_head, ticket_sep, ticket_values = ticket_sql.partition(" VALUES (")
    if not (sep and ticket_sep) or len(placeholders) != len(columns) or "ticket_id" not in columns:
        return None
    placeholders[columns.index("ticket_id")] = "t.id"
    qn = connection.ops.quote_name
    # Only Django-compiled SQL and quoted names are joined here; every value is a parameter.
    if guard is None:
        head_cte = ""
        ticket_insert = ticket_sql
    else:
        # The ticket is inserted only while the tenant's row still holds the values the caller used.
        conditions = " AND ".join(f"{qn(column)} = %s" for column in guard)
        head_cte = f"g AS (SELECT 1 FROM {qn(Tenant._meta.db_table)} WHERE {conditions}), "  # noqa: S608
        ticket_insert = f"{ticket_head} SELECT {ticket_values.removesuffix(')')} FROM g"  # noqa: S608
    ticket_cte = f"t AS ({ticket_insert} ON CONFLICT DO NOTHING RETURNING {qn('id')} AS id), "
    enhancement_cte = f"e AS ({head} SELECT {', '.join(placeholders)} FROM t RETURNING {qn('id')}) "  # noqa: S608
    statement = f"WITH {head_cte}{ticket_cte}{enhancement_cte}SELECT {qn('id')} FROM e"  # noqa: S608
    return remember(_STATEMENTS, key, statement)


def store_new_ticket(
    *, ticket: dict[str, Any], enhancement: dict[str, Any], tenant_guard: dict[str, Any] | None = None
) -> str | None:
    """Insert a new ticket and its enhancement (each given as the model's keyword arguments by attname, e.g.
    tenant_id) in one statement; return the enhancement id, or None if the ticket exists (or, with tenant_guard,
    the tenant's row no longer holds those column values). Raises IntegrityError like the ORM path (a reused
    delivery id)."""
    from enhancements.models import Enhancement
    from tickets.models import Ticket

    conn = connections[DEFAULT_DB_ALIAS]
    ticket_sql, ticket_params, _ = _plain_insert(Ticket, ticket, conn)
    enhancement_sql, enhancement_params, columns = _plain_insert(Enhancement, enhancement, conn)
    statement = _statement(ticket_sql, enhancement_sql, columns, list(tenant_guard) if tenant_guard else None)
    if statement is None:
        return None  # not the single-row shape expected: the ORM path stores it
    position = columns.index("ticket_id")
    del enhancement_params[position]
    guard_params = list(tenant_guard.values()) if tenant_guard else []
    shape = (tuple(ticket), tuple(enhancement), len(guard_params), conn.alias)
    defaulted = _SHAPE_DEFAULTED.get(shape)
    if defaulted is None:
        enhancement_defaulted = list(_defaulted(Enhancement, shape[1], conn) or [False] * len(columns))
        del enhancement_defaulted[position]
        defaulted = remember(
            _SHAPE_DEFAULTED,
            shape,
            (
                *([False] * len(guard_params)),
                *(_defaulted(Ticket, shape[0], conn) or [False] * len(ticket_params)),
                *enhancement_defaulted,
            ),
        )
    statement, params = _values_inlined(statement, [*guard_params, *ticket_params, *enhancement_params], defaulted)
    try:
        row = _fetch_one(statement, params)
    except ProgrammingError as error:
        if getattr(error.__cause__, "sqlstate", None) not in _POOLED_PREPARED_STATEMENT or not _PREPARING[0]:
            raise
        # A transaction-mode pooler without prepared statement support hands this connection's statements to
        # other server sessions: one that lost what this connection prepared (26000), or one where another
        # client already prepared the same name (42P05; psycopg names them _pg3_0, _pg3_1, ... on every
        # connection). Either way the Parse failed and nothing was written (autocommit, one statement): store
        # it unprepared, and prepare nothing more in this process.
        _PREPARING[0] = False
        logger.warning("webhook store: prepared statement lost (a pooler?); storing unprepared from now on")
        with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
            cursor.execute(statement, params)
            row = cursor.fetchone()
    return str(row[0]) if row else None


def _fetch_one(statement: str, params: list[Any]) -> Any:
    """Run the store on the process's connection and return its row.

    On a connection kept from an earlier request (CONN_MAX_AGE) the store is the webhook's first statement, and
    it is its own health check: Django's CONN_HEALTH_CHECKS would send a `SELECT 1` before it, a blocking round
    trip per webhook (docs/benchmarks.md, "One round trip per webhook"). If the kept connection turns out dead
    (the server restarted, or a firewall or pooler dropped it while idle), the store runs once more on a new
    connection, as Django's check would have done before it; a database that is down still fails the second
    attempt, and the webhook answers 503. (Should the connection die after the server committed but before the
    answer arrived, the second attempt finds the ticket stored and the webhook answers "duplicate"; the first
    attempt's row is queued and was never pushed, and the sweep enqueues it: after ENHANCEMENT_DEAD_AFTER with
    the broker empty, else after ENHANCEMENT_STUCK_AFTER. A replayed delivery makes no second job.)"""
    conn: Any = connections[DEFAULT_DB_ALIAS]  # health_check_* are not in django-stubs
    check_skipped = conn.connection is not None and conn.health_check_enabled and not conn.health_check_done
    if check_skipped:
        conn.health_check_done = True
    try:
        return _execute(statement, params)
    except OperationalError:
        if not (check_skipped and _connection_lost(conn)):
            raise
    logger.warning("webhook store: the kept database connection was dead; storing on a new one")
    conn.close()
    return _execute(statement, params)


def _execute(statement: str, params: list[Any]) -> Any:
    with _store_cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchone()


def _connection_lost(conn: Any) -> bool:
    """Return whether the driver's connection is closed (psycopg closes it when the server or network drops it)."""
    raw = conn.connection
    return raw is None or bool(raw.closed) or bool(getattr(raw, "broken", False))


# invalid_sql_statement_name (the name is unknown here), duplicate_prepared_statement (taken here by another client)
_POOLED_PREPARED_STATEMENT = frozenset({"26000", "42P05"})
_PREPARING = [True]


def _store_cursor() -> Any:
    """Return a cursor for the store: on psycopg 3, one that prepares the statement once per connection.

    Parsing and planning the two INSERTs cost PostgreSQL about 0.4 ms of the 0.7-0.8 ms it spent per webhook
    (docs/benchmarks.md, "Webhook load"); with persistent connections a prepared statement skips both. The
    statement is prepared with the protocol's Parse message (psycopg's prepare=True), not SQL PREPARE, so a
    pooler that tracks prepared statements (PgBouncer >= 1.21, max_prepared_statements) still works. Django's
    own cursors bind on the client and never prepare, so lifting the connection's prepare_threshold from None
    to "never automatically" changes nothing else. The cursor is Django's wrapper: errors are Django's
    (IntegrityError, OperationalError), execute_wrappers and query logging see the statement."""
    conn = connections[DEFAULT_DB_ALIAS]
    cursor_class = _preparing_cursor_class() if conn.vendor == "postgresql" and _PREPARING[0] else None
    if cursor_class is None:
        return conn.cursor()
    conn.close_if_health_check_failed()
    conn.ensure_connection()
    conn.validate_thread_sharing()
    with conn.wrap_database_errors:
        raw = conn.connection
        if raw.prepare_threshold is None:
            raw.prepare_threshold = _NEVER_AUTOMATICALLY
        cursor = cursor_class(raw)
    return conn.make_debug_cursor(cursor) if conn.queries_logged else conn.make_cursor(cursor)


_NEVER_AUTOMATICALLY = 2**31 - 1  # psycopg prepares at this count of executions, or when asked (prepare=True)


@functools.cache
def _preparing_cursor_class() -> Any:
    from django.db.backends.postgresql import base

    server_binding = getattr(base, "ServerBindingCursor", None)
    if server_binding is None:  # psycopg2: Django's cursor as before
        return None

    class PreparingCursor(server_binding):  # type: ignore[misc, valid-type]
        """Server-side binding, prepared on first use in each connection."""

        def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
            return super().execute(query, params, prepare=True)

    return PreparingCursor


def _values_inlined(statement: str, params: list[Any], defaulted: tuple[bool, ...]) -> tuple[str, list[Any]]:
    """Return the statement with NULL written in place of each None parameter and each constant default written as
    its literal, and the parameters left.

    psycopg's client-side binding sends a None as the literal NULL anyway, so the text PostgreSQL receives is the
    same; but psycopg caches the parsing of a statement only up to 50 parameters (MAX_CACHED_STATEMENT_PARAMS), and
    this one has about 60, most of them None, so without this it re-parses the statement on every webhook. The
    enhancement's constant defaults (status, trigger, counters, empty JSON, ...) are the same on every row: as
    literals in the prepared statement they are no longer adapted and sent on every webhook (docs/benchmarks.md,
    "One round trip per webhook"). A literal is psycopg's own quoting of the prepared value, and only plain ones
    (text without backslashes, integers, booleans, JSON) are inlined; the others stay parameters."""
    mask = tuple(
        "N" if value is None else "C" if inline else "P" for value, inline in zip(params, defaulted, strict=True)
    )
    key = (statement, mask)
    text = _STATEMENTS.get(key)
    if text is None:
        pieces = statement.split("%s")
        if len(pieces) != len(params) + 1:
            return statement, params  # a literal %s somewhere: leave the statement alone
        text = pieces[0] + "".join(
            _placeholder(kind, value) + piece for kind, value, piece in zip(mask, params, pieces[1:], strict=True)
        )
        remember(_STATEMENTS, key, text)
    return text, [value for value, kind in zip(params, mask, strict=True) if kind == "P"]


def _placeholder(kind: str, value: Any) -> str:
    if kind == "N":
        return "NULL"
    if kind == "C":
        return _literal(value).replace("%", "%%")  # the statement still goes through psycopg's %s conversion
    return "%s"
