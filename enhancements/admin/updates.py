"""Ticket updates in the admin: every request_updated event and what the worker made of it (read-only)."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from enhancements.models import TicketUpdate


@admin.register(TicketUpdate)
class TicketUpdateAdmin(admin.ModelAdmin):
    """Leads and operators see why an update did or did not refresh a note."""

    list_display = ("received_at", "tenant", "sdp_id", "status", "reason", "enhancement_link", "attempts")
    list_filter = ("status", "tenant")
    list_select_related = ("tenant",)
    search_fields = ("=sdp_id",)
    ordering = ("-received_at",)
    readonly_fields = (
        "tenant", "sdp_id", "status", "reason", "received_at", "started_at", "finished_at", "next_attempt_at",
        "attempts", "delivery_id", "request_id", "enhancement_link", "payload",
    )  # fmt: skip
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        """Updates come from SDP only."""
        return False

    def has_change_permission(self, request: HttpRequest, obj: TicketUpdate | None = None) -> bool:
        """The record is read-only."""
        return False

    @admin.display(description="Enhancement")
    def enhancement_link(self, obj: TicketUpdate) -> SafeString | str:
        """Return a link to the refreshed enhancement, if any."""
        if not obj.enhancement_id:
            return "–"
        url = reverse("admin:enhancements_enhancement_change", args=[obj.enhancement_id])
        return format_html('<a href="{}">{}</a>', url, obj.enhancement_id)
