"""import_assets <slug> <file.csv>: load the tenant's inventory (ip, hostname, role, location, owner, notes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tickets.imports import ImportReport, asset_import_csv
from tickets.models import Tenant


def report_write(command: BaseCommand, report: ImportReport) -> None:
    """Print an import report: the summary, then every rejected record with where it is and why."""
    command.stdout.write(command.style.SUCCESS(report.summary()))
    for where, reason in report.problems:
        command.stdout.write(command.style.WARNING(f"  {where}: {reason}"))


class Command(BaseCommand):
    help = "Import assets from a CSV with columns ip, hostname, role, location, owner, notes (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help="the tenant's slug")
        parser.add_argument("path", type=Path, help="the CSV file (UTF-8, header on line 1)")

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = Tenant.objects.filter(slug=options["slug"]).first()
        if tenant is None:
            raise CommandError(f"No tenant with slug {options['slug']!r}.")
        path: Path = options["path"]
        if not path.is_file():
            raise CommandError(f"{path} is not a file.")
        try:
            report = asset_import_csv(tenant=tenant, path=path)
        except (UnicodeDecodeError, OSError) as exc:
            raise CommandError(f"Cannot read {path}: {exc}") from exc
        report_write(self, report)
