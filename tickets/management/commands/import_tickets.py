"""import_tickets <slug> [--since 90d] [--until ...]: pull resolved and closed requests from the tenant's SDP."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from tqdm import tqdm

from tickets.imports import ticket_import_from_sdp
from tickets.models import Tenant
from tickets.sdp.client import ServiceDeskError

_RELATIVE = re.compile(r"^(\d+)([dhw])$")


def parse_moment(value: str, *, now: datetime) -> datetime:
    """Return the moment meant by '90d' / '12h' / '2w' (ago), an ISO date or an ISO date-time (UTC if naive)."""
    if match := _RELATIVE.match(value.strip().lower()):
        unit = {"d": "days", "h": "hours", "w": "weeks"}[match[2]]
        return now - timedelta(**{unit: int(match[1])})
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise CommandError(f"{value!r} is neither a duration like 90d/12h/2w nor an ISO date(-time).") from None
    return moment if timezone.is_aware(moment) else moment.replace(tzinfo=UTC)


class Command(BaseCommand):
    help = (
        "Import the tenant's resolved and closed requests from its ServiceDesk Plus into the searchable history. "
        "Re-running continues an interrupted import; nothing is stored twice."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help="the tenant's slug")
        parser.add_argument("--since", default="90d", help="resolved from: 90d, 12h, 2w or an ISO date (default 90d)")
        parser.add_argument("--until", default=None, help="resolved up to: same forms (default now)")
        parser.add_argument("--restart", action="store_true", help="start a new window instead of continuing")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = Tenant.objects.filter(slug=options["slug"]).first()
        if tenant is None:
            raise CommandError(f"No tenant with slug {options['slug']!r}.")
        if not tenant.has_sdp_credentials:
            raise CommandError(f"Tenant {tenant.slug} has no SDP URL or API key (set them with create_tenant).")
        now = timezone.now()
        since = parse_moment(options["since"], now=now)
        until = parse_moment(options["until"], now=now) if options["until"] else now
        if since >= until:
            raise CommandError("--since must be before --until.")
        bar = tqdm(unit="ticket", desc=f"import {tenant.slug}", file=self.stderr._out, disable=options["no_progress"])

        def progress(done: int, total: int | None) -> None:
            if total is not None and bar.total != total:
                bar.total = total
            bar.update(done - bar.n)

        try:
            report = ticket_import_from_sdp(
                tenant=tenant, since=since, until=until, restart=options["restart"], progress=progress
            )
        except ServiceDeskError as exc:
            bar.close()
            raise CommandError(
                f"SDP kept failing ({exc}). What was imported is kept; run the command again to continue."
            ) from exc
        except KeyboardInterrupt:
            bar.close()
            raise CommandError("Interrupted. What was imported is kept; run the command again to continue.") from None
        bar.close()
        window = f"resolved {report.since:%Y-%m-%d %H:%M} .. {report.until:%Y-%m-%d %H:%M} UTC"
        if report.resumed_from:
            window += f", continued from {report.resumed_from:%Y-%m-%d %H:%M}"
        self.stdout.write(f"{tenant.slug}: {window}")
        self.stdout.write(self.style.SUCCESS(report.summary()))
        for reason, count in report.reasons().most_common():
            self.stdout.write(f"  skipped {count}: {reason}")
        for where, reason in report.problems[:50]:
            self.stdout.write(f"    {where}: {reason}")
