"""The review screen: enhancements, feedback, API tokens and the dashboard in Django admin."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Exists, OuterRef, QuerySet, Subquery
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join, linebreaks
from django.utils.safestring import SafeString, mark_safe

from clusters.services import open_cluster_count
from enhancements import services
from enhancements.dashboard import chart_svg, dashboard_build
from enhancements.extras import urgency_badges
from enhancements.models import ApiToken, Enhancement, Feedback
from enhancements.render import note_sanitise
from tickets.admin import CappedCountPaginator, secret_once_response
from tickets.models import Tenant
from tickets.sdp.links import ticket_url

S = Enhancement.Status
BADGE_COLOURS = {
    S.QUEUED: "#607d8b",
    S.RUNNING: "#0277bd",
    S.AWAITING_REVIEW: "#e65100",
    S.POSTED: "#2e7d32",
    S.COMPLETED: "#1565c0",
    S.FAILED: "#c62828",
    S.REJECTED: "#6d4c41",
}
BULK_LIMIT = 50
LIST_DEFERRED = (
    "context",
    "output",
    "note_html",
    "timings",
    "error",
    "ticket__description",
    "ticket__resolution",
    "ticket__raw",
)


def status_badge(enhancement: Enhancement) -> SafeString:
    """Return the status as a coloured badge."""
    return format_html(
        '<span class="te-badge" style="background:{};color:#fff;padding:2px 8px;border-radius:10px;'
        'font-size:11px;white-space:nowrap">{}</span>',
        BADGE_COLOURS.get(enhancement.status, "#777"),
        enhancement.get_status_display(),
    )


def _ticket_link(enhancement: Enhancement, *, subject_chars: int = 80) -> SafeString:
    ticket = enhancement.ticket
    subject = ticket.subject if len(ticket.subject) <= subject_chars else ticket.subject[: subject_chars - 1] + "…"
    url = ticket_url(enhancement.tenant, ticket.sdp_id)
    if url:
        return format_html(
            '<a href="{}" target="_blank" rel="noopener noreferrer" title="Open in ServiceDesk Plus">#{}</a> {}',
            url,
            ticket.sdp_id,
            subject,
        )
    return format_html("#{} {}", ticket.sdp_id, subject)


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


class RatingFilter(admin.SimpleListFilter):
    """Filter by the feedback an enhancement received."""

    title = "rating"
    parameter_name = "rating"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        """Return the filter choices."""
        return [*Feedback.Rating.choices, ("none", "Not rated")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        """Return the rows with that rating."""
        value = self.value()
        if value == "none":
            return queryset.filter(~Exists(Feedback.objects.filter(enhancement=OuterRef("pk"))))
        if value in Feedback.Rating.values:
            return queryset.filter(Exists(Feedback.objects.filter(enhancement=OuterRef("pk"), rating=value)))
        return None


class ProviderFilter(admin.SimpleListFilter):
    """Filter by LLM provider, from a fixed list (a DISTINCT over a big table would be slow)."""

    title = "provider"
    parameter_name = "provider"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        """Return the filter choices."""
        return [("openai", "OpenAI-compatible"), ("offline", "Offline"), ("none", "None yet")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        """Return the rows of that provider."""
        if self.value() == "none":
            return queryset.filter(provider="")
        return queryset.filter(provider=self.value()) if self.value() else None


class EnhancementForm(forms.ModelForm):
    """The change form: only the note can be edited, and only while awaiting review."""

    class Meta:
        model = Enhancement
        fields = ["note_html"]
        widgets = {
            "note_html": forms.Textarea(attrs={"rows": 16, "cols": 110, "style": "font-family:monospace"}),
        }
        labels = {"note_html": "Note (HTML)"}
        help_texts = {
            "note_html": "Edit before approving. Saved and posted sanitised: scripts, styles and unknown tags "
            "are removed. The preview shows what SDP will show."
        }


@admin.register(Enhancement)
class EnhancementAdmin(admin.ModelAdmin):
    """Review, edit, approve, reject, re-run and rate enhancements."""

    form = EnhancementForm
    list_display = (
        "created_at",
        "ticket_column",
        "tenant",
        "status_column",
        "urgency_column",
        "time_to_finish",
        "provider_model",
        "rating_column",
    )
    list_display_links = ("created_at",)
    list_filter = ("status", "tenant", ProviderFilter, RatingFilter, "trigger")
    list_select_related = ("tenant", "ticket")
    search_fields = ("=ticket__sdp_id", "ticket__subject")
    search_help_text = "Search by SDP request id (exact) or subject."
    date_hierarchy = "created_at"
    ordering = ("-created_at",)
    list_per_page = 50
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = CappedCountPaginator
    actions = ("approve_selected", "reject_selected", "rerun_selected", "repost_selected")
    change_form_template = "admin/enhancements/enhancement/change_form.html"

    class Media:
        css = {"all": ("enhancements/admin.css",)}

    readonly_fields = (
        "status_column",
        "ticket_column",
        "tenant",
        "note_preview",
        "reviewed_by",
        "reviewed_at",
        "error_plain",
        "ticket_text",
        "context_display",
        "trigger",
        "attempts",
        "created_at",
        "started_at",
        "finished_at",
        "posted_at",
        "sdp_note_id",
        "timings_display",
        "provider",
        "model",
        "tokens_display",
        "feedback_display",
        "history_display",
    )

    def get_fieldsets(self, request: HttpRequest, obj: Enhancement | None = None) -> list[tuple[str | None, dict]]:
        """Return the detail page layout."""
        return [
            (None, {"fields": ("status_column", "ticket_column", "tenant", "error_plain")}),
            ("Note", {"fields": ("note_preview", "note_html", "reviewed_by", "reviewed_at")}),
            ("Ticket", {"fields": ("ticket_text",)}),
            ("Context used", {"fields": ("context_display",)}),
            (
                "Run",
                {
                    "fields": (
                        ("trigger", "attempts"),
                        ("created_at", "started_at", "finished_at", "posted_at"),
                        "timings_display",
                        ("provider", "model"),
                        "tokens_display",
                        "sdp_note_id",
                    )
                },
            ),
            ("Feedback", {"fields": ("feedback_display",)}),
            ("History of this ticket", {"fields": ("history_display",)}),
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Enhancement | None = None) -> tuple[str, ...]:
        """Return every field read-only except the note while it awaits review."""
        if obj is not None and self.has_change_permission(request, obj):
            return self.readonly_fields
        return (*self.readonly_fields, "note_html")

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        """Return enhancements with their latest rating annotated (one query for the whole page)."""
        latest = Feedback.objects.filter(enhancement=OuterRef("pk")).order_by("-created_at").values("rating")[:1]
        queryset = super().get_queryset(request).annotate(latest_rating=Subquery(latest))
        match = request.resolver_match
        if match is not None and match.url_name == "enhancements_enhancement_changelist":
            # The list shows none of the big text and JSON columns: do not read them for every row.
            queryset = queryset.defer(*LIST_DEFERRED)
        return queryset

    def has_add_permission(self, request: HttpRequest) -> bool:
        """Enhancements come from webhooks and re-runs only."""
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Enhancement | None = None) -> bool:
        """History is kept: only superusers delete (e.g. with their tenant)."""
        return request.user.is_superuser

    def has_change_permission(self, request: HttpRequest, obj: Enhancement | None = None) -> bool:
        """Only an enhancement awaiting review has anything to change (its note)."""
        if obj is not None and obj.status != S.AWAITING_REVIEW:
            return False
        return super().has_change_permission(request, obj)

    def has_approve_permission(self, request: HttpRequest) -> bool:
        """Return whether the user may approve, post and reject."""
        return request.user.has_perm("enhancements.approve_enhancement")

    def has_rerun_permission(self, request: HttpRequest) -> bool:
        """Return whether the user may re-run and re-post."""
        return request.user.has_perm("enhancements.rerun_enhancement")

    # --- columns and read-only fields -----------------------------------------------------------
    @admin.display(description="Ticket", ordering="ticket__sdp_id")
    def ticket_column(self, obj: Enhancement) -> SafeString:
        """Return the SDP id and subject, linking to the request in SDP."""
        return _ticket_link(obj)

    @admin.display(description="Status", ordering="status")
    def status_column(self, obj: Enhancement) -> SafeString:
        """Return the coloured status badge."""
        return status_badge(obj)

    @admin.display(description="Time to finish")
    @admin.display(description="Urgency")
    def urgency_column(self, obj: Enhancement) -> SafeString:
        """Return the urgency cues as badges."""
        return urgency_badges(obj.urgency)

    def time_to_finish(self, obj: Enhancement) -> str:
        """Return the time from the webhook to the final state."""
        if not obj.finished_at:
            return "—"
        return _seconds((obj.finished_at - obj.created_at).total_seconds())

    @admin.display(description="Provider / model", ordering="provider")
    def provider_model(self, obj: Enhancement) -> str:
        """Return provider and model."""
        return " / ".join(p for p in (obj.provider, obj.model) if p) or "—"

    @admin.display(description="Rating")
    def rating_column(self, obj: Enhancement) -> str:
        """Return the latest rating."""
        rating = getattr(obj, "latest_rating", None)
        return Feedback.Rating(rating).label if rating else "—"

    @admin.display(description="Note as SDP will show it")
    def note_preview(self, obj: Enhancement) -> SafeString:
        """Return the sanitised note, rendered."""
        if not obj.note_html:
            return mark_safe('<span class="quiet">No note generated yet.</span>')  # noqa: S308 - constant
        cleaned = note_sanitise(html=obj.note_html, enhancement_id=str(obj.pk))
        # nh3 has removed scripts, event handlers and unknown tags: what is left is what SDP shows.
        return format_html(
            '<div class="te-note" style="border:1px solid #ccc;padding:10px 14px;background:#fff;color:#222;'
            'max-width:900px">{}</div>',
            mark_safe(cleaned),  # noqa: S308 - sanitised by nh3 just above
        )

    @admin.display(description="Last error")
    def error_plain(self, obj: Enhancement) -> str:
        """Return the last error, or a dash."""
        return obj.error or "—"

    @admin.display(description="Ticket text")
    def ticket_text(self, obj: Enhancement) -> SafeString:
        """Return the ticket's fields and description, escaped."""
        t = obj.ticket
        meta = [
            ("Subject", t.subject),
            (
                "Requester",
                " ".join(p for p in (t.requester_name, f"<{t.requester_email}>" if t.requester_email else "") if p),
            ),
            ("Priority", t.priority),
            ("Category", t.category),
            ("Status", t.status),
            ("Technician", t.technician),
        ]
        rows = format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", ((k, v) for k, v in meta if v))
        return format_html(
            '<table class="te-table">{}</table><div class="te-description" style="max-width:900px">{}</div>',
            rows,
            mark_safe(linebreaks(t.description or "(no description)", autoescape=True)),  # noqa: S308 - escaped
        )

    @admin.display(description="Context")
    def context_display(self, obj: Enhancement) -> SafeString:
        """Return the similar tickets (with scores and links), assets and articles used."""
        context = obj.context or {}
        parts = []
        similar = context.get("similar_tickets") or []
        if similar:
            rows = []
            for item in similar:
                sdp_id = str(item.get("sdp_id", ""))
                url = ticket_url(obj.tenant, sdp_id)
                link = (
                    format_html('<a href="{}" target="_blank" rel="noopener noreferrer">#{}</a>', url, sdp_id)
                    if url
                    else format_html("#{}", sdp_id)
                )
                score = item.get("score")
                rows.append(
                    (
                        link,
                        item.get("subject", ""),
                        f"{score:.3f}" if isinstance(score, int | float) else "—",
                        (item.get("resolution") or "")[:300],
                    )
                )
            parts.append(
                format_html(
                    "<h4>Similar resolved tickets</h4><table class='te-table'><tr><th>Ticket</th><th>Subject</th>"
                    "<th>Score</th><th>Resolution</th></tr>{}</table>",
                    format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", rows),
                )
            )
        assets = context.get("assets") or []
        if assets:
            rows = [
                (
                    a.get("hostname") or "",
                    a.get("ip") or "",
                    a.get("role") or "",
                    a.get("location") or "",
                    a.get("owner") or "",
                )
                for a in assets
            ]
            parts.append(
                format_html(
                    "<h4>Assets</h4><table class='te-table'><tr><th>Hostname</th><th>IP</th><th>Role</th>"
                    "<th>Location</th><th>Owner</th></tr>{}</table>",
                    format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", rows),
                )
            )
        articles = context.get("articles") or []
        if articles:
            items = []
            for a in articles:
                score = a.get("score")
                title = (
                    format_html(
                        '<a href="{}" target="_blank" rel="noopener noreferrer">{}</a>', a["url"], a.get("title", "")
                    )
                    if str(a.get("url", "")).startswith(("http://", "https://"))
                    else format_html("{}", a.get("title", ""))
                )
                items.append((title, f" (score {score:.3f})" if isinstance(score, int | float) else ""))
            parts.append(
                format_html("<h4>Knowledge articles</h4><ul>{}</ul>", format_html_join("", "<li>{}{}</li>", items))
            )
        if not parts:
            return mark_safe('<span class="quiet">No context was found or gathered.</span>')  # noqa: S308 - constant
        return format_html_join("", "{}", ((p,) for p in parts))

    @admin.display(description="Timings per stage")
    def timings_display(self, obj: Enhancement) -> SafeString | str:
        """Return the milliseconds per stage."""
        timings = obj.timings or {}
        if not timings:
            return "—"
        return format_html_join(" · ", "{}: {} ms", ((k, v) for k, v in timings.items()))

    @admin.display(description="Tokens")
    def tokens_display(self, obj: Enhancement) -> str:
        """Return prompt and completion tokens."""
        if obj.prompt_tokens is None and obj.completion_tokens is None:
            return "—"
        total = (obj.prompt_tokens or 0) + (obj.completion_tokens or 0)
        return f"{obj.prompt_tokens or 0} prompt + {obj.completion_tokens or 0} completion = {total}"

    @admin.display(description="Ratings")
    def feedback_display(self, obj: Enhancement) -> SafeString | str:
        """Return every rating with its author and comment."""
        rows = [
            (
                f.get_rating_display(),
                str(f.user) if f.user else (f.technician_email or "API"),
                f.comment,
                f.created_at.strftime("%Y-%m-%d %H:%M"),
            )
            for f in obj.feedback.select_related("user")
        ]
        if not rows:
            return "Not rated yet."
        return format_html(
            "<table class='te-table'>{}</table>",
            format_html_join("", "<tr><td><b>{}</b></td><td>{}</td><td>{}</td><td>{}</td></tr>", rows),
        )

    @admin.display(description="Enhancements of this ticket")
    def history_display(self, obj: Enhancement) -> SafeString:
        """Return every enhancement of the same ticket, newest first."""
        others = Enhancement.objects.filter(ticket_id=obj.ticket_id).order_by("-created_at")[:20]
        rows = [
            (
                reverse("admin:enhancements_enhancement_change", args=[e.pk]),
                e.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                status_badge(e),
                e.get_trigger_display(),
                " (this one)" if e.pk == obj.pk else "",
            )
            for e in others
        ]
        return format_html("<ul>{}</ul>", format_html_join("", '<li><a href="{}">{}</a> {} {}{}</li>', rows))

    # --- saving the note ------------------------------------------------------------------------
    def save_model(self, request: HttpRequest, obj: Enhancement, form: forms.ModelForm, change: bool) -> None:
        """Save an edited note (sanitised) while the enhancement awaits review."""
        if "note_html" in form.changed_data:
            services.enhancement_note_update(enhancement_id=str(obj.pk), note_html=form.cleaned_data["note_html"])

    # --- review actions: buttons on the detail page ----------------------------------------------
    def get_urls(self) -> list[URLPattern]:
        """Return the admin URLs plus the review actions and the dashboard."""
        wrap = self.admin_site.admin_view
        own = [
            path("dashboard/", wrap(self.dashboard_view), name="enhancements_dashboard"),
            path("<uuid:object_id>/approve/", wrap(self.approve_view), name="enhancements_enhancement_approve"),
            path("<uuid:object_id>/reject/", wrap(self.reject_view), name="enhancements_enhancement_reject"),
            path("<uuid:object_id>/rerun/", wrap(self.rerun_view), name="enhancements_enhancement_rerun"),
            path("<uuid:object_id>/repost/", wrap(self.repost_view), name="enhancements_enhancement_repost"),
            path("<uuid:object_id>/feedback/", wrap(self.feedback_view), name="enhancements_enhancement_feedback"),
        ]
        return own + super().get_urls()

    def _report(self, request: HttpRequest, obj: Enhancement, result: services.ReviewResult, action: str) -> None:
        level = messages.ERROR if result.failed else messages.SUCCESS if result.changed else messages.WARNING
        self.message_user(request, result.message, level)
        if result.changed:
            self.log_change(request, obj, f"{action}: {result.message}")

    def _back(self, object_id: Any) -> HttpResponseRedirect:
        return HttpResponseRedirect(reverse("admin:enhancements_enhancement_change", args=[object_id]))

    def _action_view(self, request: HttpRequest, object_id: Any, *, permitted: bool) -> Enhancement:
        if request.method != "POST":
            raise PermissionDenied("Review actions are POST only.")
        if not permitted:
            raise PermissionDenied
        return get_object_or_404(Enhancement, pk=object_id)

    def approve_view(self, request: HttpRequest, object_id: Any) -> HttpResponse:
        """Save the (edited) note and post it to SDP."""
        obj = self._action_view(request, object_id, permitted=self.has_approve_permission(request))
        note = request.POST.get("note_html")
        # Outside any transaction: the post is a network call (Django wraps only the change form).
        result = services.enhancement_approve(enhancement_id=str(obj.pk), user=request.user, note_html=note)
        self._report(request, obj, result, "Approved and posted")
        return self._back(obj.pk)

    def reject_view(self, request: HttpRequest, object_id: Any) -> HttpResponse:
        """Reject the enhancement."""
        obj = self._action_view(request, object_id, permitted=self.has_approve_permission(request))
        self._report(
            request, obj, services.enhancement_reject(enhancement_id=str(obj.pk), user=request.user), "Rejected"
        )
        return self._back(obj.pk)

    def rerun_view(self, request: HttpRequest, object_id: Any) -> HttpResponse:
        """Queue a new enhancement of the same ticket and open it."""
        obj = self._action_view(request, object_id, permitted=self.has_rerun_permission(request))
        result = services.enhancement_rerun_request(enhancement_id=str(obj.pk), user=request.user)
        self._report(request, obj, result, "Re-run")
        return self._back(result.enhancement_id or obj.pk)

    def repost_view(self, request: HttpRequest, object_id: Any) -> HttpResponse:
        """Post the note of a failed post again."""
        obj = self._action_view(request, object_id, permitted=self.has_rerun_permission(request))
        self._report(
            request, obj, services.enhancement_repost(enhancement_id=str(obj.pk), user=request.user), "Re-posted"
        )
        return self._back(obj.pk)

    def feedback_view(self, request: HttpRequest, object_id: Any) -> HttpResponse:
        """Record the reviewer's rating and comment."""
        obj = self._action_view(request, object_id, permitted=request.user.has_perm("enhancements.add_feedback"))
        rating = request.POST.get("feedback_rating", "")
        if rating not in Feedback.Rating.values:
            self.message_user(request, "Choose helpful or not helpful.", messages.ERROR)
            return self._back(obj.pk)
        feedback = services.feedback_create(
            enhancement_id=str(obj.pk),
            rating=rating,
            comment=request.POST.get("feedback_comment", "")[:2000],
            user=request.user,
        )
        self.message_user(request, f"Thanks: rated {feedback.get_rating_display().lower()}.", messages.SUCCESS)
        self.log_change(request, obj, f"Rated {feedback.get_rating_display().lower()}")
        return self._back(obj.pk)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        """Show the detail page with the review buttons the user may use."""
        obj = self.get_object(request, object_id)
        extra = dict(extra_context or {})
        if obj is not None:
            can_approve = self.has_approve_permission(request)
            can_rerun = self.has_rerun_permission(request)
            extra.update(
                can_approve=can_approve and obj.status == S.AWAITING_REVIEW,
                can_rerun=can_rerun and obj.status not in Enhancement.ACTIVE_STATUSES,
                can_repost=can_rerun and obj.status == S.FAILED and bool(obj.note_html),
                can_rate=request.user.has_perm("enhancements.add_feedback"),
                ratings=Feedback.Rating.choices,
            )
        return super().change_view(request, object_id, form_url, extra_context=extra)

    # --- bulk actions ---------------------------------------------------------------------------
    def _bulk(self, request: HttpRequest, queryset: QuerySet, run: Any, action: str) -> None:
        rows = list(queryset.order_by("created_at")[: BULK_LIMIT + 1])
        if len(rows) > BULK_LIMIT:
            self.message_user(
                request, f"Only the first {BULK_LIMIT} selected enhancements were handled.", messages.WARNING
            )
        counts = {"done": 0, "skipped": 0, "failed": 0}
        for obj in rows[:BULK_LIMIT]:
            result = run(enhancement_id=str(obj.pk), user=request.user)
            if result.failed:
                counts["failed"] += 1
                self.message_user(request, f"#{obj.ticket.sdp_id}: {result.message}", messages.ERROR)
            elif result.changed:
                counts["done"] += 1
            else:
                counts["skipped"] += 1
            if result.changed:
                self.log_change(request, obj, f"{action}: {result.message}")
        self.message_user(
            request,
            f"{action}: {counts['done']} done, {counts['skipped']} skipped (not in a state for it), "
            f"{counts['failed']} failed.",
            messages.SUCCESS if not counts["failed"] else messages.WARNING,
        )

    @admin.action(description="Approve and post selected", permissions=["approve"])
    def approve_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        """Approve and post each selected enhancement that awaits review."""
        self._bulk(request, queryset, services.enhancement_approve, "Approved and posted")

    @admin.action(description="Reject selected", permissions=["approve"])
    def reject_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        """Reject each selected enhancement that awaits review."""
        self._bulk(request, queryset, services.enhancement_reject, "Rejected")

    @admin.action(description="Re-run selected", permissions=["rerun"])
    def rerun_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        """Queue a new enhancement for each selected one's ticket."""
        self._bulk(request, queryset, services.enhancement_rerun_request, "Re-run")

    @admin.action(description="Re-post selected failed posts", permissions=["rerun"])
    def repost_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        """Post again each selected enhancement whose post failed."""
        self._bulk(request, queryset, services.enhancement_repost, "Re-posted")

    # --- dashboard ------------------------------------------------------------------------------
    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        """Show the last 30 days for all tenants or one."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        tenants = list(Tenant.objects.order_by("name").only("id", "name", "slug"))
        selected = next((t for t in tenants if str(t.pk) == request.GET.get("tenant", "")), None)
        board = dashboard_build(tenant=selected, days=30)
        context = {
            **self.admin_site.each_context(request),
            "title": "Dashboard: last 30 days",
            "opts": self.model._meta,
            "tenants": tenants,
            "selected": selected,
            "board": board,
            "chart": chart_svg(days=board.days),
            "p50": _seconds(board.p50_seconds),
            "p95": _seconds(board.p95_seconds),
            "failure_rate": "—" if board.failure_rate is None else f"{board.failure_rate:.1%}",
            "helpful_rate": "—" if board.helpful_rate is None else f"{board.helpful_rate:.0%}",
            "open_clusters": open_cluster_count(tenant=selected),
            "clusters_url": reverse("admin:clusters_outagecluster_changelist")
            + "?status__exact=open"
            + (f"&tenant__id__exact={selected.pk}" if selected else ""),
            "queue_url": reverse("admin:enhancements_enhancement_changelist")
            + "?status__exact=awaiting_review"
            + (f"&tenant__id__exact={selected.pk}" if selected else ""),
        }
        return TemplateResponse(request, "admin/enhancements/dashboard.html", context)


@admin.register(Feedback)
class FeedbackAdmin(admin.ModelAdmin):
    """Ratings from reviewers and technicians (added from the enhancement page or the API)."""

    list_display = ("created_at", "enhancement_link", "rating", "author", "api_token", "comment")
    list_filter = ("rating", "enhancement__tenant")
    list_select_related = ("enhancement__ticket", "user", "api_token")
    search_fields = ("comment", "technician_email", "=enhancement__ticket__sdp_id")
    date_hierarchy = "created_at"
    show_full_result_count = False
    paginator = CappedCountPaginator
    readonly_fields = ("enhancement", "user", "technician_email", "api_token", "rating", "comment", "created_at")

    @admin.display(description="Enhancement")
    def enhancement_link(self, obj: Feedback) -> SafeString:
        """Return a link to the rated enhancement."""
        url = reverse("admin:enhancements_enhancement_change", args=[obj.enhancement_id])
        return format_html('<a href="{}">#{}</a>', url, obj.enhancement.ticket.sdp_id)

    @admin.display(description="By")
    def author(self, obj: Feedback) -> str:
        """Return who rated."""
        return str(obj.user) if obj.user else obj.technician_email or "API token"

    def has_add_permission(self, request: HttpRequest) -> bool:
        """Ratings are added on the enhancement page or through the API."""
        return False

    def has_change_permission(self, request: HttpRequest, obj: Feedback | None = None) -> bool:
        """Ratings are not edited here."""
        return False


class ApiTokenForm(forms.ModelForm):
    """Create a token: a name and the one tenant it may see."""

    class Meta:
        model = ApiToken
        fields = ["name", "tenant"]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Per-tenant tokens for the read API; the key is shown once, then only its prefix."""

    form = ApiTokenForm
    list_display = ("name", "tenant", "prefix_display", "created_by", "created_at", "last_used_at", "live")
    list_filter = ("tenant",)
    list_select_related = ("tenant", "created_by")
    search_fields = ("name", "prefix")
    actions = ("revoke_selected",)
    readonly_fields = ("prefix_display", "created_by", "created_at", "last_used_at", "revoked_at")

    def get_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> list[str]:
        """Return the form fields (name and tenant only when adding)."""
        return ["name", "tenant"] if obj is None else ["name", "tenant", *self.readonly_fields]

    def get_readonly_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> tuple[str, ...]:
        """Return the tenant read-only once created (a token's scope never changes)."""
        return self.readonly_fields if obj is None else ("tenant", *self.readonly_fields)

    @admin.display(description="Key")
    def prefix_display(self, obj: ApiToken) -> str:
        """Return the recognisable start of the key."""
        return f"{obj.prefix}…" if obj.prefix else "—"

    @admin.display(description="Live", boolean=True)
    def live(self, obj: ApiToken) -> bool:
        """Return whether the token is not revoked."""
        return obj.revoked_at is None

    def save_model(self, request: HttpRequest, obj: ApiToken, form: forms.ModelForm, change: bool) -> None:
        """Create the token through the service, or save its new name."""
        if change:
            super().save_model(request, obj, form, change)
            return
        token, key = services.api_token_create(tenant=obj.tenant, name=obj.name, user=request.user)
        obj.pk, obj.prefix, obj.created_at = token.pk, token.prefix, token.created_at
        obj._state.adding = False
        request._te_new_key = key  # type: ignore[attr-defined]

    def response_add(self, request: HttpRequest, obj: ApiToken, post_url_continue: str | None = None) -> HttpResponse:
        """Show the new key once."""
        key = getattr(request, "_te_new_key", None)
        if not key:
            return super().response_add(request, obj, post_url_continue)
        return secret_once_response(
            request,
            self.admin_site,
            title=f"API token “{obj.name}” for {obj.tenant}",
            secrets=[("Key", key)],
            notes=[
                "Copy it now: it is stored hashed and cannot be shown again.",
                "Send it as the header  Authorization: Token <key>  to /api/v1/enhancements/.",
            ],
            back_url=reverse("admin:enhancements_apitoken_changelist"),
        )

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        """Revoke the selected tokens."""
        revoked = 0
        for token in queryset:
            if services.api_token_revoke(token_id=token.pk):
                revoked += 1
                self.log_change(request, token, "Revoked")
        self.message_user(request, f"{revoked} token(s) revoked.", messages.SUCCESS)


from enhancements import update_admin  # noqa: E402, F401 - registers the ticket updates' admin
