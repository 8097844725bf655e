"""`manage.py migrate`, serialised on PostgreSQL: one process at a time applies migrations.

Every web pod's init container (and compose's migrate service) runs `migrate`, so two replicas that start
together would run it concurrently; both could try to create the same table and one would crash. This
override takes a PostgreSQL session-level advisory lock (scoped to the database) around Django's own
command: the second process waits, then finds nothing left to apply and exits 0. Other databases (SQLite
for local runs) run the command unchanged.
"""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.core.management.commands import migrate
from django.db import connections
from django.db.utils import Error as DatabaseError

# Any constant 64-bit key works; this is "te-migr" in ASCII, so it is recognisable in pg_locks.
LOCK_KEY = 0x74652D6D69677200


class Command(migrate.Command):
    help = migrate.Command.help + " Serialised by a PostgreSQL advisory lock when several processes run it."

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--lock-timeout",
            type=float,
            default=300.0,
            help="Seconds to wait for another migrate to finish before failing (PostgreSQL only, default 300).",
        )

    def handle(self, *args: Any, **options: Any) -> str | None:
        connection = connections[options["database"]]
        if connection.vendor != "postgresql":
            return super().handle(*args, **options)
        deadline = time.monotonic() + options["lock_timeout"]
        announced = False
        with connection.cursor() as cursor:
            while True:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", [LOCK_KEY])
                if cursor.fetchone()[0]:
                    break
                if time.monotonic() > deadline:
                    raise CommandError(f"another migrate held the migration lock for {options['lock_timeout']:g} s")
                if not announced:
                    self.stdout.write("Another migrate is running: waiting for its lock.")
                    announced = True
                time.sleep(0.5)
        try:
            return super().handle(*args, **options)
        finally:
            # A lost connection has released the session lock already.
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])
            except DatabaseError:
                pass
