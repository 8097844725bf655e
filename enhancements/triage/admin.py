"""Triage in Django admin: per-tenant settings and overview (history, dry run, acceptance), SDP lists, decisions."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html

from enhancements.triage.choices import choices_refresh
from enhancements.triage.dashboard import acceptance_rows, dry_run, history_accuracy
from enhancements.triage.models import SdpChoice, TriageDecision, TriageField, TriageMode, TriageSetting
from enhancements.triage.services import (
    triage_decision_reject,
    triage_setting_update,
    triage_settings_list,
    triage_undo,
)
from project.admin_helpers import acting_user
from tickets.models import Tenant
from tickets.sdp.client import ServiceDeskError


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


@admin.register(TriageSetting)
class TriageSettingAdmin(admin.ModelAdmin):
    list_display = ("tenant", "field", "mode", "threshold", "default_value", "history_at_threshold", "overview")
    list_editable = ("mode", "threshold", "default_value")
    list_filter = ("tenant", "field", "mode")
    list_select_related = ("tenant",)

    @admin.display(description="right at this threshold (history)")
    def history_at_threshold(self, obj: TriageSetting) -> str:
        """Return the leave-one-out accuracy and coverage at the field's threshold."""
        figures = history_accuracy(tenant=obj.tenant).get(obj.field, {})
        if not figures.get("fitted"):
            return "not measured yet (run triage_report)"
        return f"{_pct(figures['accuracy'])} right, {_pct(figures['coverage'])} of tickets"

    @admin.display(description="")
    def overview(self, obj: TriageSetting) -> str:
        """Link to the tenant's triage page."""
        url = reverse("admin:enhancements_triage_overview", args=[obj.tenant_id])
        return format_html('<a href="{}">Triage overview</a>', url)

    def get_urls(self) -> list[URLPattern]:
        """Add the per-tenant overview."""
        view = self.admin_site.admin_view(self.overview_view)
        return [path("tenant/<int:tenant_id>/", view, name="enhancements_triage_overview"), *super().get_urls()]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        """List settings, with a link to every tenant's overview (tenants without stored settings too)."""
        tenants = [
            (t, reverse("admin:enhancements_triage_overview", args=[t.pk]))
            for t in Tenant.objects.order_by("name").only("id", "name", "slug")[:200]
        ]
        return super().changelist_view(request, {**(extra_context or {}), "triage_tenants": tenants})

    def overview_view(self, request: HttpRequest, tenant_id: int) -> HttpResponse:
        """Show a tenant's triage: settings form, history accuracy, dry run of apply, acceptance, decisions."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        tenant = get_object_or_404(Tenant, pk=tenant_id)
        if request.method == "POST":
            return self._overview_post(request, tenant)
        overrides: dict[str, float] = {}
        for name in TriageField.values:
            raw = request.GET.get(f"threshold_{name}")
            if raw:
                try:
                    overrides[name] = min(1.0, max(0.0, float(raw)))
                except ValueError:
                    messages.error(request, f"Ignored the trial threshold {raw!r} for {name}: not a number.")
        rows, totals = dry_run(tenant=tenant, thresholds=overrides)
        settings_ = triage_settings_list(tenant=tenant)
        fields = [
            {
                "name": name,
                "label": label,
                "setting": settings_[name],
                "trial": overrides.get(name, settings_[name].threshold),
                "history": history_accuracy(tenant=tenant).get(name, {}),
                "totals": totals[name],
            }
            for name, label in TriageField.choices
        ]
        context = {
            **self.admin_site.each_context(request),
            "title": f"Triage: {tenant.name}",
            "opts": self.model._meta,
            "tenant": tenant,
            "fields": fields,
            "subcategory_history": history_accuracy(tenant=tenant).get("subcategory", {}),
            "modes": TriageMode.choices,
            "rows": rows,
            "acceptance": acceptance_rows(tenant=tenant, since=timezone.now() - timedelta(days=90)),
            "can_change": self.has_change_permission(request),
            "choices_count": SdpChoice.objects.filter(tenant=tenant, active=True).count(),
            "decisions_url": reverse("admin:enhancements_triagedecision_changelist")
            + f"?tenant__id__exact={tenant.pk}",
            "choices_url": reverse("admin:enhancements_sdpchoice_changelist") + f"?tenant__id__exact={tenant.pk}",
        }
        return TemplateResponse(request, "admin/enhancements/triage_overview.html", context)

    def _overview_post(self, request: HttpRequest, tenant: Tenant) -> HttpResponse:
        if not self.has_change_permission(request):
            raise PermissionDenied
        here = reverse("admin:enhancements_triage_overview", args=[tenant.pk])
        action = request.POST.get("action", "")
        if action == "refresh":
            try:
                messages.success(request, choices_refresh(tenant=tenant).sentence())
            except ServiceDeskError as exc:
                messages.error(request, f"Could not fetch the SDP lists: ServiceDesk Plus: {exc}")
            return HttpResponseRedirect(here)
        if action == "report":
            from django_q.tasks import async_task

            async_task("enhancements.triage.tasks.report", tenant.pk, task_name=f"triage-report-{tenant.slug}")
            messages.success(request, "Leave-one-out report queued; the figures update when the worker finishes.")
            return HttpResponseRedirect(here)
        field = request.POST.get("field", "")
        try:
            threshold = float(request.POST.get("threshold", ""))
            setting = triage_setting_update(
                tenant=tenant,
                field=field,
                mode=request.POST.get("mode"),
                threshold=threshold,
                default_value=request.POST.get("default_value", "").strip(),
            )
        except ValueError as exc:
            messages.error(request, f"Not saved: {exc}.")
            return HttpResponseRedirect(here)
        messages.success(
            request, f"{setting.get_field_display()}: {setting.get_mode_display()} at {setting.threshold:.0%}."
        )
        return HttpResponseRedirect(here)


@admin.register(SdpChoice)
class SdpChoiceAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "parent", "tenant", "active", "description", "fetched_at")
    list_editable = ("description",)
    list_filter = ("tenant", "kind", "active")
    search_fields = ("name", "parent", "description")
    readonly_fields = ("tenant", "kind", "sdp_id", "name", "parent", "active", "fetched_at")
    actions = ["refresh_from_sdp"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        """The values come from SDP, never typed in."""
        return False

    @admin.action(description="Refresh the SDP lists of the selected values' tenants", permissions=["change"])
    def refresh_from_sdp(self, request: HttpRequest, queryset: QuerySet[SdpChoice]) -> None:
        """Fetch the lists again for each tenant in the selection."""
        for tenant in Tenant.objects.filter(pk__in=queryset.values("tenant_id")):
            try:
                messages.success(request, f"{tenant.slug}: {choices_refresh(tenant=tenant).sentence()}")
            except ServiceDeskError as exc:
                messages.error(request, f"{tenant.slug}: ServiceDesk Plus: {exc}")


@admin.register(TriageDecision)
class TriageDecisionAdmin(admin.ModelAdmin):
    list_display = (
        "created_at", "tenant", "ticket_ref", "field", "value", "subvalue", "confidence_pct", "outcome",
        "previous_value", "acceptance", "provider",
    )  # fmt: skip
    list_filter = ("tenant", "field", "outcome", "acceptance", "provider")
    search_fields = ("ticket__sdp_id", "value", "previous_value")
    list_select_related = ("tenant", "ticket")
    actions = ["undo_writes", "reject_decisions"]
    date_hierarchy = "created_at"

    def get_readonly_fields(self, request: HttpRequest, obj: TriageDecision | None = None) -> list[str]:
        """Every field: a decision is a record."""
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        """Decisions are made by the pipeline."""
        return False

    @admin.display(description="ticket", ordering="ticket__sdp_id")
    def ticket_ref(self, obj: TriageDecision) -> str:
        """Return the SDP id."""
        return f"#{obj.ticket.sdp_id}"

    @admin.display(description="confidence", ordering="confidence")
    def confidence_pct(self, obj: TriageDecision) -> str:
        """Return the calibrated confidence."""
        return _pct(obj.confidence)

    @admin.action(
        description="Undo the selected writes (write the previous value back, with a note)", permissions=["change"]
    )
    def undo_writes(self, request: HttpRequest, queryset: QuerySet[TriageDecision]) -> None:
        """Undo each selected write; report each outcome."""
        for decision in queryset:
            result = triage_undo(decision_id=decision.pk, user=acting_user(request))
            messages.add_message(request, messages.SUCCESS if result.undone else messages.WARNING, result.message)

    @admin.action(
        description="Reject the selected suggestions (drop a held write; undo one we made)", permissions=["change"]
    )
    def reject_decisions(self, request: HttpRequest, queryset: QuerySet[TriageDecision]) -> None:
        """Reject each selected decision; report each outcome."""
        for decision in queryset[:100]:
            result = triage_decision_reject(decision_id=decision.pk, user=acting_user(request))
            messages.add_message(request, messages.SUCCESS if result.undone else messages.WARNING, result.message)
