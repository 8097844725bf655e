"""`manage.py triage_report <tenant>`: leave-one-out accuracy and coverage of triage, per field and threshold.

Each resolved ticket of the tenant is triaged from the others (the neighbour vote), and compared with the
values it ended with. The calibrations fitted on the way are stored (unless --no-save), which is what lets the
offline vote's confidence gate writes; the dashboard shows the same report.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from enhancements.triage.calibration import TARGET_ACCURACY, triage_report_build
from tickets.models import Tenant

LABELS = {"category": "Category", "subcategory": "Subcategory (with its category)", "priority": "Priority",
          "group": "Support group", "technician": "Technician"}  # fmt: skip


def report_text(report: dict[str, Any]) -> str:
    """Return the report as the table a lead reads."""
    who = "the LLM's confidence" if report.get("provider", "offline") != "offline" else "the neighbour vote"
    lines = [f"Triage leave-one-out report for {report['tenant']}, {who} ({report['seconds']} s)"]
    for name, data in report["fields"].items():
        lines.append("")
        overall = "—" if data["accuracy_all"] is None else f"{data['accuracy_all']:.1%}"
        advised = data["advised_threshold"]
        lines.append(
            f"{LABELS.get(name, name)}: {data['tickets']} tickets with a final value, {data['suggested']} suggested, "
            f"{overall} right overall; advised threshold for {data['target_accuracy']:.0%} right: "
            + (f"{advised:.2f}" if advised is not None else "none reaches it")
        )
        lines.append("  threshold  coverage  accuracy  suggestions")
        for row in data["thresholds"]:
            accuracy = "—" if row["accuracy"] is None else f"{row['accuracy']:.1%}"
            lines.append(
                f"  ≥ {row['threshold']:.2f}     {row['coverage']:>6.1%}    {accuracy:>6}   {row['suggested']:>6}"
            )
        bins = [
            f"{b['from']:.1f}-{b['to']:.1f}: {b['accuracy']:.0%} of {b['count']}"
            for b in data["calibration"]
            if b["count"]
        ]
        lines.append("  calibration (confidence band: share right): " + "; ".join(bins))
    return "\n".join(lines)


class Command(BaseCommand):
    help = "Leave-one-out triage accuracy and coverage per field and threshold; fits the tenant's calibration."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("tenant")
        parser.add_argument("--sample", type=int, default=None, help="evaluate at most N tickets (spread evenly)")
        parser.add_argument("--target", type=float, default=TARGET_ACCURACY, help="accuracy the advice aims at")
        parser.add_argument("--json", action="store_true", help="print the report as JSON")
        parser.add_argument("--no-save", action="store_true", help="do not store the fitted calibrations")
        parser.add_argument(
            "--llm",
            action="store_true",
            help="measure and calibrate the LLM's confidence instead (one LLM call per ticket; use --sample)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = Tenant.objects.filter(slug=options["tenant"]).first()
        if tenant is None:
            raise CommandError(f"No tenant {options['tenant']!r}.")
        if options["sample"] is not None and options["sample"] < 1:
            raise CommandError("--sample must be at least 1.")
        report = triage_report_build(
            tenant=tenant,
            sample=options["sample"],
            save=not options["no_save"],
            target=options["target"],
            provider="openai" if options["llm"] else "offline",
        )
        self.stdout.write(json.dumps(report, indent=1) if options["json"] else report_text(report))
