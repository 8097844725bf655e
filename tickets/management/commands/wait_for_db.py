"""`manage.py wait_for_db`: block until the default database accepts connections, or give up."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.utils import Error as DatabaseError


class Command(BaseCommand):
    help = (
        "Wait until the database accepts connections (exponential backoff), "
        "then exit 0; exit 1 when --timeout seconds pass first."
    )

    # Connecting must work before anything else: do not let Django run its system checks
    # (some of them query the database) before we know it is there.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--timeout",
            type=float,
            default=60.0,
            help="Seconds to keep trying before failing (default 60).",
        )
        parser.add_argument(
            "--interval",
            type=float,
            default=0.5,
            help="First delay between attempts in seconds; doubles up to --max-interval (default 0.5).",
        )
        parser.add_argument(
            "--max-interval",
            type=float,
            default=5.0,
            help="Longest delay between attempts in seconds (default 5).",
        )
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS, help="Database alias (default 'default').")

    def handle(self, *args: Any, **options: Any) -> None:
        timeout: float = options["timeout"]
        delay: float = max(options["interval"], 0.05)
        max_delay: float = max(options["max_interval"], delay)
        alias: str = options["database"]
        connection = connections[alias]
        settings = connection.settings_dict
        where = f"{settings.get('ENGINE', '?').rsplit('.', 1)[-1]} {settings.get('HOST') or ''}".strip()
        if settings.get("PORT"):
            where += f":{settings['PORT']}"
        where += f"/{settings.get('NAME')}"

        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            attempt += 1
            try:
                connection.close()
                connection.ensure_connection()
                with connection.cursor() as cursor:
                    cursor.execute("SELECT 1")
                    cursor.fetchone()
            except DatabaseError as exc:
                # The first line of a driver error is the useful part ("connection refused" ...).
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CommandError(
                        f"database {alias} ({where}) still unavailable after {timeout:g}s "
                        f"and {attempt} attempts: {reason}"
                    ) from exc
                sleep_for = min(delay, remaining)
                self.stderr.write(
                    f"waiting for database {alias} ({where}): attempt {attempt} failed: {reason}; "
                    f"retrying in {sleep_for:.1f}s"
                )
                time.sleep(sleep_for)
                delay = min(delay * 2, max_delay)
                continue
            connection.close()
            self.stdout.write(f"database {alias} ({where}) is available (attempt {attempt})")
            return
