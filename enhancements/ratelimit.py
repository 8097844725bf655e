"""Per-tenant webhook counters that stay exact under concurrency, with or without Redis.

With Redis one INCR is atomic. Without it Django's database cache cannot count: its `incr` reads the value
and writes it back, so parallel webhooks overwrite each other's increments (200 webhooks at 40 in parallel
against a limit of 50 let 134 through). Here one `INSERT ... ON CONFLICT DO UPDATE ... RETURNING` statement
adds one and reads the result: PostgreSQL takes a row lock for it, SQLite (3.35+) a write lock.
"""

from __future__ import annotations

from datetime import timedelta

from django.db import connection
from django.utils import timezone

from enhancements.models import RateCounter

_TABLE = RateCounter._meta.db_table


def counter_hit(*, key: str, ttl_seconds: int = 120) -> int:
    """Add one to the counter at key (created with a time to live) and return its new value."""
    expires = timezone.now() + timedelta(seconds=ttl_seconds)
    quoted = connection.ops.quote_name
    sql = (
        f"INSERT INTO {quoted(_TABLE)} ({quoted('key')}, {quoted('count')}, {quoted('expires_at')})"  # noqa: S608
        f" VALUES (%s, 1, %s) ON CONFLICT ({quoted('key')}) DO UPDATE"
        f" SET {quoted('count')} = {quoted(_TABLE)}.{quoted('count')} + 1 RETURNING {quoted('count')}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [key, expires])
        return int(cursor.fetchone()[0])


def counters_expire() -> int:
    """Delete counters past their time to live; return how many."""
    deleted, _ = RateCounter.objects.filter(expires_at__lt=timezone.now()).delete()
    return deleted
