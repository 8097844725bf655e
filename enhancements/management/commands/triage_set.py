"""`manage.py triage_set <tenant> <field> [--mode off|suggest|apply] [--threshold T] [--default V]`.

The command-line twin of the tenant's triage page (create_tenant lives in the tickets app, which may not import
the pipeline's settings). Prints the field's setting and, when measured, its leave-one-out accuracy there.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from enhancements.triage.dashboard import history_accuracy
from enhancements.triage.models import TriageField, TriageMode
from enhancements.triage.services import triage_setting_update
from tickets.models import Tenant


class Command(BaseCommand):
    help = "Set a tenant's triage mode, confidence threshold and default value for one field."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("tenant")
        parser.add_argument("field", choices=TriageField.values)
        parser.add_argument("--mode", choices=TriageMode.values)
        parser.add_argument("--threshold", type=float, help="calibrated confidence needed to apply (0..1)")
        parser.add_argument("--default", dest="default_value", help="SDP's default value, counted as unset")

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = Tenant.objects.filter(slug=options["tenant"]).first()
        if tenant is None:
            raise CommandError(f"No tenant {options['tenant']!r}.")
        try:
            setting = triage_setting_update(
                tenant=tenant,
                field=options["field"],
                mode=options["mode"],
                threshold=options["threshold"],
                default_value=options["default_value"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        line = f"{tenant.slug} {setting.field}: {setting.mode} at {setting.threshold:.2f}"
        if setting.default_value:
            line += f", default “{setting.default_value}” counts as unset"
        figures = history_accuracy(tenant=tenant).get(setting.field, {})
        if figures.get("fitted") and figures.get("accuracy") is not None:
            line += f"; on history {figures['accuracy']:.0%} right, {figures['coverage']:.0%} of tickets covered"
        else:
            line += "; not measured on history yet (run triage_report)"
        self.stdout.write(line)
