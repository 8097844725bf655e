"""Lift a tenant's daily AI budget for today (an operator's decision, logged with who made it)."""

from __future__ import annotations

import getpass
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tickets.admin_budget import budget_summary
from tickets.ai_budget import llm_budget_fetch, llm_budget_lift
from tickets.models import Tenant


class Command(BaseCommand):
    help = (
        "Add to a tenant's AI budget for today only (default: one more day's allowance of tokens and cost); "
        "with --show, only print today's use."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--tokens", type=int, help="tokens to add to today's budget (default: one day's budget)")
        parser.add_argument("--cost", help="cost to add to today's cap (default: one day's cap)")
        parser.add_argument("--by", help="who lifts it, for the record (default: the login name)")
        parser.add_argument("--show", action="store_true", help="print today's use and budget, change nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = Tenant.objects.filter(slug=options["slug"]).first()
        if tenant is None:
            raise CommandError(f"No tenant {options['slug']!r}.")
        if options["show"]:
            self.stdout.write(f"{tenant.slug}: {budget_summary(llm_budget_fetch(tenant=tenant))}")
            return
        try:
            cost = Decimal(options["cost"]) if options["cost"] is not None else None
            if cost is not None and not cost.is_finite():
                raise InvalidOperation
        except InvalidOperation:
            raise CommandError(f"--cost {options['cost']!r} is not a number") from None
        by = options["by"] or f"{getpass.getuser()} (manage.py llm_budget_lift)"
        try:
            state = llm_budget_lift(tenant=tenant, by=by, tokens=options["tokens"], cost=cost)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if not state.token_budget and not state.cost_cap_micros:
            self.stdout.write(f"{tenant.slug}: the AI budget is unlimited; nothing to lift. {budget_summary(state)}")
            return
        self.stdout.write(f"{tenant.slug}: today's AI budget lifted. {budget_summary(state)}")
