"""`manage.py refresh_sdp_lists [<tenant>...]`: fetch the tenants' SDP lists that triage chooses from, now."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from enhancements.triage.choices import choices_refresh, choices_refresh_all
from tickets.models import Tenant
from tickets.sdp.client import ServiceDeskError


class Command(BaseCommand):
    help = "Fetch categories, subcategories, priorities, groups and technicians from the tenants' SDP."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("tenants", nargs="*", help="tenant slugs (default: every tenant with SDP credentials)")

    def handle(self, *args: Any, **options: Any) -> None:
        if not options["tenants"]:
            for slug, outcome in choices_refresh_all().items():
                self.stdout.write(f"{slug}: {outcome}")
            return
        for slug in options["tenants"]:
            tenant = Tenant.objects.filter(slug=slug).first()
            if tenant is None:
                raise CommandError(f"No tenant {slug!r}.")
            if not tenant.has_sdp_credentials:
                raise CommandError(f"Tenant {slug!r} has no SDP URL and API key to fetch the lists with.")
            try:
                self.stdout.write(f"{slug}: {choices_refresh(tenant=tenant).sentence()}")
            except ServiceDeskError as exc:
                raise CommandError(f"{slug}: ServiceDesk Plus: {exc}") from exc
