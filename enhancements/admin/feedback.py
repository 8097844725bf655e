"""Ratings from reviewers and technicians, read-only in the admin."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from enhancements.models import Feedback
from project.admin_helpers import CappedCountPaginator


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
