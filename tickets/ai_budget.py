"""The daily AI cost guard per tenant ("denial of wallet"): tokens and an estimated cost, counted per day.

A ticket storm, or two SDP automations answering each other, can make thousands of LLM calls. Every LLM call
(an enhancement's note, a triage suggestion) adds the tokens the provider reported to the tenant's row of the
day (`LlmUsage`) in one `INSERT ... ON CONFLICT DO UPDATE` statement, atomic on PostgreSQL and SQLite alike (as
`enhancements/ratelimit.py` counts webhooks). Before a call, `llm_budget_check` compares the day's use with the
tenant's budget: once the tokens reach the daily token budget, or the estimated cost the daily cost cap, the
caller uses the offline provider and says so. The day is the calendar day in `LLM_BUDGET_TIMEZONE` (UTC by
default): the budget renews at its midnight.

Budgets: the tenant's `llm_daily_token_budget` / `llm_daily_cost_cap`, or when empty the deployment's
`LLM_DAILY_TOKEN_BUDGET` / `LLM_DAILY_COST_CAP`; 0 means unlimited. The cost is estimated from `LLM_PRICES`
(per million prompt and completion tokens, per model). An operator lifts today's budget with the tenant admin's
action or `manage.py llm_budget_lift`: it adds one more day's allowance (or the amount given) to today only,
and records who and when (on the row, in the log and in the admin history).

Checks are not reservations: calls already running when the budget is reached still finish and are counted, so
a day can end above its budget by at most the calls in flight (threads × workers, a few thousand tokens each).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import connection
from django.utils import timezone

from tickets.models import LlmUsage, Tenant

logger = logging.getLogger(__name__)

_TABLE = LlmUsage._meta.db_table
MICROS = Decimal(1_000_000)


def llm_budget_day(*, now: datetime | None = None) -> date:
    """Return the budget's day: the calendar date in LLM_BUDGET_TIMEZONE."""
    return (now or timezone.now()).astimezone(ZoneInfo(settings.LLM_BUDGET_TIMEZONE)).date()


def llm_price_find(*, model: str) -> tuple[Decimal, Decimal] | None:
    """Return (prompt, completion) price per million tokens of a model from LLM_PRICES ("*" for any other)."""
    prices: dict[str, tuple[Decimal, Decimal]] = settings.LLM_PRICES
    return prices.get(model) or prices.get("*")


def llm_cost_estimate(*, model: str, prompt_tokens: int, completion_tokens: int) -> int:
    """Return the estimated cost of a call in millionths of the price unit (0 when the model has no price)."""
    price = llm_price_find(model=model)
    if price is None:
        return 0
    # A price per million tokens is a price in millionths per token.
    return int((price[0] * prompt_tokens + price[1] * completion_tokens).to_integral_value(ROUND_HALF_UP))


@dataclass(frozen=True)
class BudgetState:
    """A tenant's use of the day against its budget (0 = unlimited), and whether the LLM may still be called."""

    tenant: Tenant
    day: date
    calls: int
    tokens: int
    cost_micros: int
    token_budget: int  # today's, an operator's lift included; 0 = unlimited
    cost_cap_micros: int  # 0 = no cap
    lifted_at: datetime | None = None
    lifted_by: str = ""

    @property
    def cost(self) -> Decimal:
        """Return today's estimated cost in the price unit."""
        return Decimal(self.cost_micros) / MICROS

    @property
    def cost_cap(self) -> Decimal:
        """Return today's cost cap in the price unit (0: none)."""
        return Decimal(self.cost_cap_micros) / MICROS

    @property
    def exhausted(self) -> str:
        """Return why the LLM may not be called any more today, or "" while there is room."""
        if self.token_budget and self.tokens >= self.token_budget:
            return f"{self.tokens} of {self.token_budget} tokens used on {self.day} ({settings.LLM_BUDGET_TIMEZONE})"
        if self.cost_cap_micros and self.cost_micros >= self.cost_cap_micros:
            return (
                f"estimated cost {self.cost:.2f} reached the cap of {self.cost_cap:.2f} on {self.day} "
                f"({settings.LLM_BUDGET_TIMEZONE})"
            )
        return ""

    @property
    def share(self) -> float | None:
        """Return the larger of the used shares of the token budget and the cost cap (None: both unlimited)."""
        shares = [self.tokens / self.token_budget] if self.token_budget else []
        if self.cost_cap_micros:
            shares.append(self.cost_micros / self.cost_cap_micros)
        return max(shares) if shares else None


def _tenant_budget(*, tenant: Tenant) -> tuple[int, int]:
    """Return the tenant's daily (token budget, cost cap in millionths) before any lift; 0 = unlimited."""
    tokens = tenant.llm_daily_token_budget
    cap = tenant.llm_daily_cost_cap
    tokens = settings.LLM_DAILY_TOKEN_BUDGET if tokens is None else tokens
    cap = settings.LLM_DAILY_COST_CAP if cap is None else cap
    return int(tokens), int(Decimal(cap) * MICROS)


def _state(tenant: Tenant, day: date, row: LlmUsage | None) -> BudgetState:
    tokens, cap = _tenant_budget(tenant=tenant)
    return BudgetState(
        tenant=tenant,
        day=day,
        calls=row.calls if row else 0,
        tokens=row.tokens if row else 0,
        cost_micros=row.cost_micros if row else 0,
        token_budget=tokens + (row.extra_tokens if row else 0) if tokens else 0,
        cost_cap_micros=cap + (row.extra_cost_micros if row else 0) if cap else 0,
        lifted_at=row.lifted_at if row else None,
        lifted_by=row.lifted_by if row else "",
    )


def llm_budget_fetch(*, tenant: Tenant, day: date | None = None) -> BudgetState:
    """Return the tenant's use and budget of the day (today by default)."""
    day = day or llm_budget_day()
    return _state(tenant, day, LlmUsage.objects.filter(tenant=tenant, day=day).first())


def llm_budget_list(*, tenants: list[Tenant]) -> list[BudgetState]:
    """Return today's state of each tenant, reading the usage rows in one query."""
    day = llm_budget_day()
    rows = {row.tenant_id: row for row in LlmUsage.objects.filter(tenant__in=tenants, day=day)}
    return [_state(tenant, day, rows.get(tenant.pk)) for tenant in tenants]


def llm_budget_check(*, tenant: Tenant) -> str:
    """Return why the tenant's LLM budget for today is spent, or "" when a call may be made."""
    tokens, cap = _tenant_budget(tenant=tenant)
    if not tokens and not cap:
        return ""  # unlimited: no query
    return llm_budget_fetch(tenant=tenant).exhausted


COUNTERS = ("calls", "prompt_tokens", "completion_tokens", "tokens", "cost_micros", "extra_tokens",
            "extra_cost_micros")  # fmt: skip


def _upsert(*, tenant: Tenant, day: date, values: dict[str, int], lifted_by: str | None = None) -> None:
    """Add the values to the tenant's row of the day, creating the row, in one statement."""
    quoted = connection.ops.quote_name
    row: dict[str, Any] = {"tenant_id": tenant.pk, "day": day, **dict.fromkeys(COUNTERS, 0), **values}
    row |= {"lifted_at": timezone.now() if lifted_by else None, "lifted_by": (lifted_by or "")[:150]}
    updates = [f"{quoted(c)} = {quoted(_TABLE)}.{quoted(c)} + excluded.{quoted(c)}" for c in values]
    if lifted_by:
        updates += [f"{quoted(c)} = excluded.{quoted(c)}" for c in ("lifted_at", "lifted_by")]
    sql = (
        f"INSERT INTO {quoted(_TABLE)} ({', '.join(quoted(c) for c in row)})"  # noqa: S608
        f" VALUES ({', '.join(['%s'] * len(row))})"
        f" ON CONFLICT ({quoted('tenant_id')}, {quoted('day')}) DO UPDATE SET {', '.join(updates)}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, list(row.values()))


def llm_usage_record(*, tenant: Tenant, model: str, prompt_tokens: int | None, completion_tokens: int | None) -> int:
    """Add one LLM call's tokens (as the provider reported them) to the tenant's day; return its estimated cost."""
    prompt, completion = max(int(prompt_tokens or 0), 0), max(int(completion_tokens or 0), 0)
    cost = llm_cost_estimate(model=model, prompt_tokens=prompt, completion_tokens=completion)
    try:
        _upsert(
            tenant=tenant,
            day=llm_budget_day(),
            values={"calls": 1, "prompt_tokens": prompt, "completion_tokens": completion,
                    "tokens": prompt + completion, "cost_micros": cost},
        )  # fmt: skip
    except Exception:
        # The call was made and its note is worth posting; a lost count only makes the guard late.
        logger.exception("could not record %d LLM tokens for tenant %s", prompt + completion, tenant.slug)
    return cost


def llm_budget_lift(*, tenant: Tenant, by: str, tokens: int | None = None, cost: Decimal | None = None) -> BudgetState:
    """Add to today's budget only (one more day's allowance unless amounts are given); return the new state.

    Raises ValueError on a negative amount. Logged with who lifted it; the row keeps who and when. An unlimited
    budget (no token budget, no cost cap) has nothing to lift: nothing is written and the state is returned.
    """
    base_tokens, base_cap = _tenant_budget(tenant=tenant)
    add_tokens = base_tokens if tokens is None else int(tokens)
    add_cost = base_cap if cost is None else int(Decimal(cost) * MICROS)
    if add_tokens < 0 or add_cost < 0:
        raise ValueError("a lift adds tokens or cost; it cannot be negative")
    if not base_tokens and not base_cap:
        logger.info("AI budget of tenant %s is unlimited; nothing to lift (asked by %s)", tenant.slug, by or "unknown")
        return llm_budget_fetch(tenant=tenant)
    day = llm_budget_day()
    _upsert(
        tenant=tenant,
        day=day,
        values={"extra_tokens": add_tokens, "extra_cost_micros": add_cost},
        lifted_by=by or "unknown",
    )
    state = llm_budget_fetch(tenant=tenant, day=day)
    logger.warning(
        "AI budget of tenant %s lifted for %s by %s: +%d tokens, +%s cost; today's budget is now %s tokens, cap %s",
        tenant.slug, day, by or "unknown", add_tokens, Decimal(add_cost) / MICROS,
        state.token_budget or "unlimited", f"{state.cost_cap:.2f}" if state.cost_cap_micros else "none",
    )  # fmt: skip
    return state
