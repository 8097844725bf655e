"""Per-tenant API tokens in the admin: created through the service, the key shown once."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse

from enhancements import services
from enhancements.models import ApiToken
from project.admin_helpers import acting_user, secret_once_response

if TYPE_CHECKING:
    from django.contrib.admin.options import _FieldGroups


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

    def get_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> _FieldGroups:
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
        token, key = services.api_token_create(tenant=obj.tenant, name=obj.name, user=acting_user(request))
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
