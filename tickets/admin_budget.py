"""The tenant admin's view of the daily AI budget: today's use, and the operator's "lift today's budget"."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from tickets.ai_budget import BudgetState, llm_budget_fetch, llm_budget_lift
from tickets.models import LlmUsage, Tenant


def budget_summary(state: BudgetState) -> str:
    """Return today's use against the budget in one line (tokens, estimated cost, lift)."""
    tokens = f"{state.tokens:,} of {state.token_budget:,} tokens" if state.token_budget else f"{state.tokens:,} tokens"
    cost = f"{state.cost:.2f} of {state.cost_cap:.2f}" if state.cost_cap_micros else f"{state.cost:.2f}"
    text = f"{state.day}: {tokens}, estimated cost {cost}, {state.calls} calls"
    if state.lifted_at:
        text += f"; lifted by {state.lifted_by} at {state.lifted_at:%H:%M} UTC"
    if state.exhausted:
        text += ". Reached: notes are written offline until the next day or a lift."
    return text


def budget_lift(model_admin: admin.ModelAdmin, request: HttpRequest, tenant: Tenant) -> None:
    """Lift the tenant's budget for today, record it in the admin history and say what it is now."""
    who = request.user.get_username() if request.user.is_authenticated else "unknown"
    state = llm_budget_lift(tenant=tenant, by=who)
    if not state.token_budget and not state.cost_cap_micros:
        model_admin.message_user(request, f"{tenant.slug}: the AI budget is unlimited; nothing to lift.")
        return
    model_admin.log_change(request, tenant, f"Lifted today's AI budget ({state.day}): {budget_summary(state)}")
    model_admin.message_user(
        request, f"{tenant.slug}: today's AI budget lifted by one day's allowance. {budget_summary(state)}"
    )


@admin.action(description="Lift today's AI budget (add one day's allowance)", permissions=["change"])
def lift_budget_selected(model_admin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Tenant]) -> None:
    """Lift today's AI budget of each selected tenant (audited: admin history and log)."""
    for tenant in queryset[:50]:
        budget_lift(model_admin, request, tenant)


def budget_today(tenant: Tenant) -> str:
    """Return the tenant's AI use today, for the change page and the list."""
    if tenant.pk is None:
        return "—"
    return budget_summary(llm_budget_fetch(tenant=tenant))


@admin.register(LlmUsage)
class LlmUsageAdmin(admin.ModelAdmin):
    """Each tenant's AI use per day, as the budget counted it; read-only (the lift is on the tenant)."""

    list_display = ("day", "tenant", "tokens", "calls", "cost", "extra_tokens", "lifted_by", "lifted_at")
    list_filter = ("tenant",)
    list_select_related = ("tenant",)
    date_hierarchy = "day"

    @admin.display(description="estimated cost")
    def cost(self, obj: LlmUsage) -> str:
        """Return the estimated cost in the price unit."""
        return f"{obj.cost_micros / 1_000_000:.2f}"

    def has_add_permission(self, request: HttpRequest) -> bool:
        """Rows are written by the LLM calls only."""
        return False

    def has_change_permission(self, request: HttpRequest, obj: LlmUsage | None = None) -> bool:
        """The record is not edited: an operator lifts the budget on the tenant."""
        return False
