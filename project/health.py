"""Liveness (/health) and readiness (/api/v1/ready) views with real dependency checks."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import DatabaseError, connection
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

logger = logging.getLogger(__name__)
_migrations_ok = False


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        return True
    except DatabaseError as exc:
        logger.warning("health: database check failed: %s", exc)
        return False


def _redis_state() -> str:
    """Return "connected", "not configured" or "unreachable"."""
    if not settings.REDIS_URL:
        return "not configured"
    import redis

    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
        return "connected"
    except (redis.RedisError, OSError) as exc:
        logger.warning("health: redis check failed: %s", exc)
        return "unreachable"


def _migrations_applied() -> bool:
    global _migrations_ok
    if _migrations_ok:
        return True
    executor = MigrationExecutor(connection)
    _migrations_ok = not executor.migration_plan(executor.loader.graph.leaf_nodes())
    return _migrations_ok


@never_cache
@require_GET
def health(request: HttpRequest) -> JsonResponse:
    """Return 200 when the database (and Redis, when configured) answer, else 503 naming the part."""
    database = "connected" if _database_ok() else "unreachable"
    redis_state = _redis_state()
    healthy = database == "connected" and redis_state != "unreachable"
    body = {"status": "healthy" if healthy else "unhealthy", "database": database, "redis": redis_state}
    return JsonResponse(body, status=200 if healthy else 503)


@never_cache
@require_GET
def ready(request: HttpRequest) -> JsonResponse:
    """Return 200 when the database is reachable, migrations are applied and the broker answers."""
    problems: dict[str, str] = {}
    if not _database_ok():
        problems["database"] = "unreachable"
    else:
        try:
            if not _migrations_applied():
                problems["migrations"] = "pending"
        except DatabaseError:
            problems["migrations"] = "unknown"
    if _redis_state() == "unreachable":
        problems["broker"] = "unreachable"
    if problems:
        return JsonResponse({"status": "not ready", **problems}, status=503)
    return JsonResponse({"status": "ready"})
