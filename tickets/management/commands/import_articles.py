"""import_articles <slug> <path>: load knowledge articles from a folder of Markdown/HTML files or a CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tickets.imports import article_import
from tickets.management.commands.import_assets import report_write
from tickets.models import Tenant


class Command(BaseCommand):
    help = (
        "Import knowledge articles from a folder of .md/.html files (Markdown: '# Title', optional 'Tags:' and "
        "'URL:' lines, then the body) or a CSV with columns title, url, body, tags (idempotent by title)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help="the tenant's slug")
        parser.add_argument("path", type=Path, help="a folder of .md/.html files, or a .csv file")

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = Tenant.objects.filter(slug=options["slug"]).first()
        if tenant is None:
            raise CommandError(f"No tenant with slug {options['slug']!r}.")
        path: Path = options["path"]
        if not path.exists():
            raise CommandError(f"{path} does not exist.")
        try:
            report = article_import(tenant=tenant, path=path)
        except (UnicodeDecodeError, OSError) as exc:
            raise CommandError(f"Cannot read {path}: {exc}") from exc
        report_write(self, report)
