"""The admin dashboard: last-N-days figures of the pipeline, a server-side SVG chart, and the page that shows them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from django.conf import settings
from django.contrib import admin
from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.db.models.options import Options
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from clusters.services import cluster_count_open
from enhancements.models import Enhancement, Feedback
from tickets.admin_budget import budget_summary
from tickets.ai_budget import llm_budget_list
from tickets.models import Tenant

S = Enhancement.Status
# Chart series, bottom to top: (label, statuses, colour).
OUTCOMES: list[tuple[str, tuple[str, ...], str]] = [
    ("Posted", (S.POSTED,), "#2e7d32"),
    ("Completed (dry run)", (S.COMPLETED,), "#1565c0"),
    ("Awaiting review", (S.AWAITING_REVIEW,), "#f9a825"),
    ("In progress", (S.QUEUED, S.RUNNING), "#90a4ae"),
    ("Rejected", (S.REJECTED,), "#6d4c41"),
    ("Failed", (S.FAILED,), "#c62828"),
]


@dataclass(frozen=True)
class Dashboard:
    """Figures for one tenant (or all) over a window of days."""

    tenant: Tenant | None
    since: datetime
    days: list[tuple[date, dict[str, int]]]
    total: int
    p50_seconds: float | None
    p95_seconds: float | None
    finished: int
    failed: int
    top_errors: list[tuple[str, int]]
    review_queue: int
    feedback_total: int
    helpful: int
    prompt_tokens: int
    completion_tokens: int
    outcome_totals: dict[str, int] = field(default_factory=dict)

    @property
    def failure_rate(self) -> float | None:
        """Return failed / finished, or None before anything finished."""
        return self.failed / self.finished if self.finished else None

    @property
    def helpful_rate(self) -> float | None:
        """Return helpful / rated, or None without feedback."""
        return self.helpful / self.feedback_total if self.feedback_total else None


def _percentile(durations: QuerySet, count: int, fraction: float) -> float | None:
    if not count:
        return None
    # Nearest-rank percentile, picked by the database so no rows are loaded into Python.
    index = max(0, math.ceil(fraction * count) - 1)
    value = durations.order_by("duration").values_list("duration", flat=True)[index]
    return value.total_seconds() if isinstance(value, timedelta) else value / 1_000_000


def dashboard_build(*, tenant: Tenant | None = None, days: int = 30, now: datetime | None = None) -> Dashboard:
    """Return the dashboard figures for the last `days` days (today included), for one tenant or all."""
    now = now or timezone.now()
    first_day = timezone.localdate(now) - timedelta(days=days - 1)
    since = timezone.make_aware(datetime.combine(first_day, datetime.min.time()))
    scope = Enhancement.objects.all() if tenant is None else Enhancement.objects.filter(tenant=tenant)
    window = scope.filter(created_at__gte=since)

    by_status: dict[tuple[date, str], int] = {}
    rows = window.annotate(day=TruncDate("created_at")).values("day", "status").annotate(n=Count("id")).order_by()
    for row in rows:
        by_status[(row["day"], row["status"])] = row["n"]
    series_of = {status: label for label, statuses, _ in OUTCOMES for status in statuses}
    per_day: list[tuple[date, dict[str, int]]] = []
    totals = {label: 0 for label, _, _ in OUTCOMES}
    for offset in range(days):
        day = first_day + timedelta(days=offset)
        counts = {label: 0 for label, _, _ in OUTCOMES}
        for status, label in series_of.items():
            counts[label] += by_status.get((day, status), 0)
            totals[label] += by_status.get((day, status), 0)
        per_day.append((day, counts))

    durations = window.filter(status=S.POSTED, posted_at__isnull=False).annotate(
        duration=ExpressionWrapper(F("posted_at") - F("created_at"), output_field=DurationField())
    )
    posted = durations.count()
    finished = window.filter(status__in=Enhancement.FINAL_STATUSES).count()
    failed_rows = window.filter(status=S.FAILED)
    top_errors = [
        (row["error"] or "(no message)", row["n"])
        for row in failed_rows.values("error").annotate(n=Count("id")).order_by("-n", "error")[:5]
    ]
    feedback = Feedback.objects.filter(created_at__gte=since)
    if tenant is not None:
        feedback = feedback.filter(enhancement__tenant=tenant)
    ratings = feedback.aggregate(total=Count("id"), helpful=Count("id", filter=Q(rating=Feedback.Rating.HELPFUL)))
    tokens = window.aggregate(prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"))
    return Dashboard(
        tenant=tenant,
        since=since,
        days=per_day,
        total=sum(totals.values()),
        p50_seconds=_percentile(durations, posted, 0.50),
        p95_seconds=_percentile(durations, posted, 0.95),
        finished=finished,
        failed=failed_rows.count(),
        top_errors=top_errors,
        review_queue=scope.filter(status=S.AWAITING_REVIEW).count(),
        feedback_total=ratings["total"],
        helpful=ratings["helpful"],
        prompt_tokens=tokens["prompt"] or 0,
        completion_tokens=tokens["completion"] or 0,
        outcome_totals=totals,
    )


def _nice_ceiling(value: int) -> int:
    if value <= 4:
        return 4
    magnitude = 10 ** (len(str(value)) - 1)
    for step in (1, 2, 2.5, 5, 10):
        ceiling = int(step * magnitude)
        if ceiling >= value and ceiling % 4 == 0:
            return ceiling
    return int(math.ceil(value / 4) * 4)


def chart_svg(*, days: list[tuple[date, dict[str, int]]], width: int = 860, height: int = 260) -> SafeString:
    """Return a stacked bar chart of enhancements per day by outcome as inline SVG (no scripts, no CDN)."""
    left, right, top, bottom = 44, 12, 12, 70
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max((sum(counts.values()) for _, counts in days), default=0)
    ceiling = _nice_ceiling(peak)
    slot = plot_w / max(len(days), 1)
    bar = max(slot * 0.7, 1)
    parts: list[str] = []
    for i in range(5):
        value = ceiling * i // 4
        y = top + plot_h - plot_h * i / 4
        parts.append(
            format_html(
                '<line x1="{}" x2="{}" y1="{}" y2="{}" stroke="#ddd"/>'
                '<text x="{}" y="{}" font-size="11" text-anchor="end" fill="#666">{}</text>',
                left, left + plot_w, f"{y:.1f}", f"{y:.1f}", left - 6, f"{y + 4:.1f}", value,
            )
        )  # fmt: skip
    for index, (day, counts) in enumerate(days):
        x = left + index * slot + (slot - bar) / 2
        y = top + plot_h
        for label, _, colour in OUTCOMES:
            n = counts.get(label, 0)
            if not n:
                continue
            h = plot_h * n / ceiling
            y -= h
            parts.append(
                format_html(
                    '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}: {} {}</title></rect>',
                    f"{x:.1f}", f"{y:.1f}", f"{bar:.1f}", f"{h:.1f}", colour, day.isoformat(), n, label.lower(),
                )
            )  # fmt: skip
        if index % 5 == 0 or index == len(days) - 1:
            parts.append(
                format_html(
                    '<text x="{}" y="{}" font-size="11" text-anchor="middle" fill="#666">{}</text>',
                    f"{x + bar / 2:.1f}", top + plot_h + 16, day.strftime("%b %d"),
                )
            )  # fmt: skip
    legend_x = left
    for label, _, colour in OUTCOMES:
        parts.append(
            format_html(
                '<rect x="{}" y="{}" width="12" height="12" fill="{}"/>'
                '<text x="{}" y="{}" font-size="12" fill="#333">{}</text>',
                legend_x, height - 26, colour, legend_x + 16, height - 16, label,
            )
        )  # fmt: skip
        legend_x += 24 + 7 * len(label)
    return format_html(
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {} {}" width="100%" role="img" '
        'aria-label="Enhancements per day by outcome">{}</svg>',
        width,
        height,
        format_html_join("", "{}", ((p,) for p in parts)),
    )


def duration(value: float | None) -> str:
    """Return seconds as a short human duration (s, min or h), or a dash."""
    if value is None:
        return "—"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def budget_rows(*, tenants: list[Tenant]) -> list[dict[str, object]]:
    """Return today's AI use per tenant: tokens, estimated cost, budget, share used and state."""
    rows = []
    for state in llm_budget_list(tenants=tenants):
        share = state.share
        rows.append(
            {
                "tenant": state.tenant,
                "tokens": state.tokens,
                "token_budget": state.token_budget or "unlimited",
                "cost": f"{state.cost:.2f}",
                "cost_cap": f"{state.cost_cap:.2f}" if state.cost_cap_micros else "none",
                "calls": state.calls,
                "share": "—" if share is None else f"{share:.0%}",
                "reached": bool(state.exhausted),
                "summary": budget_summary(state),
                "change_url": reverse("admin:tickets_tenant_change", args=[state.tenant.pk]),
            }
        )
    return rows


def dashboard_page(request: HttpRequest, *, admin_site: admin.AdminSite, opts: Options) -> HttpResponse:
    """Return the dashboard page for the last 30 days, for all tenants or the one asked for."""
    tenants = list(
        Tenant.objects.order_by("name").only("id", "name", "slug", "llm_daily_token_budget", "llm_daily_cost_cap")
    )
    selected = next((t for t in tenants if str(t.pk) == request.GET.get("tenant", "")), None)
    board = dashboard_build(tenant=selected, days=30)
    context = {
        **admin_site.each_context(request),
        "title": "Dashboard: last 30 days",
        "opts": opts,
        "tenants": tenants,
        "selected": selected,
        "board": board,
        "chart": chart_svg(days=board.days),
        "p50": duration(board.p50_seconds),
        "p95": duration(board.p95_seconds),
        "failure_rate": "—" if board.failure_rate is None else f"{board.failure_rate:.1%}",
        "helpful_rate": "—" if board.helpful_rate is None else f"{board.helpful_rate:.0%}",
        "open_clusters": cluster_count_open(tenant=selected),
        "budgets": budget_rows(tenants=[selected] if selected else tenants),
        "budget_timezone": settings.LLM_BUDGET_TIMEZONE,
        "clusters_url": reverse("admin:clusters_outagecluster_changelist")
        + "?status__exact=open"
        + (f"&tenant__id__exact={selected.pk}" if selected else ""),
        "queue_url": reverse("admin:enhancements_enhancement_changelist")
        + "?status__exact=awaiting_review"
        + (f"&tenant__id__exact={selected.pk}" if selected else ""),
    }
    return TemplateResponse(request, "admin/enhancements/dashboard.html", context)
