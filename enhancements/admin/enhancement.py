"""The review screen of enhancements: list, detail page, the review buttons and bulk actions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import URLPattern, path, reverse
from django.utils.safestring import SafeString

from enhancements import services
from enhancements.admin import display
from enhancements.admin.filters import LanguageFilter, ProviderFilter, RatingFilter
from enhancements.admin.forms import EnhancementForm
from enhancements.dashboard import dashboard_page, duration
from enhancements.extras import urgency_badges
from enhancements.models import Enhancement, Feedback
from project.admin_helpers import CappedCountPaginator, acting_user

if TYPE_CHECKING:
    from django.contrib.admin.options import _FieldsetSpec

S = Enhancement.Status
BULK_LIMIT = 50
LIST_DEFERRED = ("context", "output", "note_html", "timings", "error", "ticket__description", "ticket__resolution",
                 "ticket__raw")  # fmt: skip


@admin.register(Enhancement)
class EnhancementAdmin(admin.ModelAdmin):
    """Review, edit, approve, reject, re-run and rate enhancements."""

    form = EnhancementForm
    list_display = (
        "created_at",
        "ticket_column",
        display.language_column,
        "tenant",
        "status_column",
        "urgency_column",
        "time_to_finish",
        "provider_model",
        "rating_column",
    )
    list_display_links = ("created_at",)
    list_filter = ("status", "tenant", LanguageFilter, ProviderFilter, RatingFilter, "trigger")
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
        "budget_display",
        "feedback_display",
        "history_display",
    )

    def get_fieldsets(self, request: HttpRequest, obj: Enhancement | None = None) -> _FieldsetSpec:
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
                        "budget_display",
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
        return display.ticket_link(obj)

    @admin.display(description="Status", ordering="status")
    def status_column(self, obj: Enhancement) -> SafeString:
        """Return the coloured status badge."""
        return display.status_badge(obj)

    @admin.display(description="Urgency")
    def urgency_column(self, obj: Enhancement) -> SafeString:
        """Return the urgency cues as badges."""
        return urgency_badges(obj.urgency)

    @admin.display(description="Time to finish")
    def time_to_finish(self, obj: Enhancement) -> str:
        """Return the time from the webhook to the final state."""
        if not obj.finished_at:
            return "—"
        return duration((obj.finished_at - obj.created_at).total_seconds())

    @admin.display(description="Provider / model", ordering="provider")
    def provider_model(self, obj: Enhancement) -> str:
        """Return provider and model."""
        label = " / ".join(p for p in (obj.provider, obj.model) if p) or "—"
        return f"{label} · AI budget reached" if obj.over_budget else label

    @admin.display(description="AI budget")
    def budget_display(self, obj: Enhancement) -> str:
        """Return whether the tenant's daily AI budget made this note an offline one, and why."""
        return display.budget_explanation(obj)

    @admin.display(description="Rating")
    def rating_column(self, obj: Enhancement) -> str:
        """Return the latest rating."""
        rating = getattr(obj, "latest_rating", None)
        return Feedback.Rating(rating).label if rating else "—"

    @admin.display(description="Note as SDP will show it")
    def note_preview(self, obj: Enhancement) -> SafeString:
        """Return the sanitised note, rendered."""
        return display.note_preview(obj)

    @admin.display(description="Last error")
    def error_plain(self, obj: Enhancement) -> str:
        """Return the last error, or a dash."""
        return obj.error or "—"

    @admin.display(description="Ticket text")
    def ticket_text(self, obj: Enhancement) -> SafeString:
        """Return the ticket's fields and description, escaped."""
        return display.ticket_text(obj)

    @admin.display(description="Context")
    def context_display(self, obj: Enhancement) -> SafeString:
        """Return the similar tickets (with scores and links), assets and articles used."""
        return display.context_display(obj)

    @admin.display(description="Timings per stage")
    def timings_display(self, obj: Enhancement) -> SafeString | str:
        """Return the milliseconds per stage."""
        return display.timings_display(obj)

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
        return display.feedback_display(obj)

    @admin.display(description="Enhancements of this ticket")
    def history_display(self, obj: Enhancement) -> SafeString:
        """Return every enhancement of the same ticket, newest first."""
        return display.history_display(obj)

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
        result = services.enhancement_approve(enhancement_id=str(obj.pk), user=acting_user(request), note_html=note)
        self._report(request, obj, result, "Approved and posted")
        return self._back(obj.pk)

    def reject_view(self, request: HttpRequest, object_id: Any) -> HttpResponse:
        """Reject the enhancement."""
        obj = self._action_view(request, object_id, permitted=self.has_approve_permission(request))
        self._report(
            request, obj, services.enhancement_reject(enhancement_id=str(obj.pk), user=acting_user(request)), "Rejected"
        )
        return self._back(obj.pk)

    def rerun_view(self, request: HttpRequest, object_id: Any) -> HttpResponse:
        """Queue a new enhancement of the same ticket and open it."""
        obj = self._action_view(request, object_id, permitted=self.has_rerun_permission(request))
        result = services.enhancement_rerun_request(enhancement_id=str(obj.pk), user=acting_user(request))
        self._report(request, obj, result, "Re-run")
        return self._back(result.enhancement_id or obj.pk)

    def repost_view(self, request: HttpRequest, object_id: Any) -> HttpResponse:
        """Post the note of a failed post again."""
        obj = self._action_view(request, object_id, permitted=self.has_rerun_permission(request))
        self._report(
            request,
            obj,
            services.enhancement_repost(enhancement_id=str(obj.pk), user=acting_user(request)),
            "Re-posted",
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
            user=acting_user(request),
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
            result = run(enhancement_id=str(obj.pk), user=acting_user(request))
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
        """Show the dashboard (enhancements.dashboard) to users who may view enhancements."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        return dashboard_page(request, admin_site=self.admin_site, opts=self.model._meta)
