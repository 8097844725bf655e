"""Admin for tenants (write-only secrets, connection test, webhook URL), ticket history, assets, articles."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from project.admin_helpers import CappedCountPaginator, secret_once_response
from tickets.admin_budget import budget_lift, budget_today, lift_budget_selected
from tickets.models import Asset, KnowledgeArticle, Tenant, Ticket, TicketFetch
from tickets.sdp.auth import servicedesk_client
from tickets.sdp.client import ServiceDeskError, check_base_url
from tickets.services import USE_DEFAULT, tenant_create_or_update, webhook_secret_decode, webhook_url_build

if TYPE_CHECKING:
    from django.contrib.admin.options import _FieldsetSpec


def connection_test(tenant: Tenant) -> tuple[bool, str]:
    """Call the tenant's SDP once (list one request); return success and the exact outcome."""
    try:
        with servicedesk_client(tenant=tenant) as client:
            page = client.list_requests(row_count=1, sort_order="desc")
    except ServiceDeskError as exc:
        return False, f"{tenant.slug}: connection failed: {exc}"
    total = f"{page.total_count} requests visible" if page.total_count is not None else "requests readable"
    return True, f"{tenant.slug}: connected to {tenant.sdp_base_url} ({total})."


def _or_default(value: Any) -> Any:
    """Return the form's value for a per-tenant setting; empty means the deployment's default."""
    return USE_DEFAULT if value is None else value


def _write_only(label: str, help_text: str) -> forms.CharField:
    """Return a password-style field that sets a secret and never renders the stored value."""
    return forms.CharField(
        label=label,
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text=help_text,
    )


class TenantForm(forms.ModelForm):
    """Tenant settings; secrets are write-only fields that set or rotate, never show, the stored value."""

    new_sdp_api_key = _write_only("Set SDP API key", "Write-only. Leave empty to keep the current key.")
    clear_sdp_api_key = forms.BooleanField(
        label="Remove the SDP API key",
        required=False,
        help_text="The tenant then runs dry: notes are kept, not posted.",
    )
    new_webhook_secret = _write_only(
        "Set webhook secret", "Write-only. Leave empty to keep the current secret (a new tenant gets a generated one)."
    )
    new_zoho_client_secret = _write_only(
        "Set Zoho client secret",
        "Write-only. SDP Cloud only: with the refresh token, the worker renews expired access tokens.",
    )
    new_zoho_refresh_token = _write_only("Set Zoho refresh token", "Write-only. Leave empty to keep the current token.")
    rotate_webhook_secret = forms.BooleanField(
        label="Generate a new webhook secret",
        required=False,
        help_text="Shown once after saving; SDP must be updated with it.",
    )

    class Meta:
        model = Tenant
        fields = [
            "slug",
            "name",
            "enabled",
            "review_required",
            "sdp_base_url",
            "sdp_auth_type",
            "webhook_auth",
            "llm_model",
            "note_language",
            "rate_limit_per_minute",
            "llm_daily_token_budget",
            "llm_daily_cost_cap",
            "cluster_window_minutes",
            "cluster_threshold",
            "refresh_interval_minutes",
            "vip_requesters",
            "zoho_accounts_url",
            "zoho_client_id",
        ]

    def _checked_url(self, name: str) -> str:
        """Return the field's URL after the same safety check the SDP client and the token renewal make."""
        url = self.cleaned_data.get(name, "")
        if url:
            try:
                # No DNS here (the form is saved in a transaction); every SDP call checks again, resolving.
                check_base_url(url, resolve=False)
            except ServiceDeskError as exc:
                raise forms.ValidationError(str(exc)) from exc
        return url

    def clean_zoho_accounts_url(self) -> str:
        """Return the Zoho accounts URL after the safety check the token renewal makes."""
        return self._checked_url("zoho_accounts_url")

    def clean_sdp_base_url(self) -> str:
        """Return the URL after the same safety check the SDP client makes."""
        return self._checked_url("sdp_base_url")

    def clean(self) -> dict[str, Any]:
        """Refuse contradictory secret instructions."""
        super().clean()
        data = self.cleaned_data
        if data.get("new_sdp_api_key") and data.get("clear_sdp_api_key"):
            self.add_error("clear_sdp_api_key", "Either set a new key or remove it, not both.")
        if data.get("new_webhook_secret") and data.get("rotate_webhook_secret"):
            self.add_error("rotate_webhook_secret", "Either type a secret or generate one, not both.")
        return data


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    """Operators manage tenants; support leads see them without secrets."""

    form = TenantForm
    list_display = (
        "slug",
        "name",
        "enabled",
        "review_required",
        "sdp_base_url",
        "sdp_auth_type",
        "api_key_state",
        "webhook_auth",
        "secret_state",
    )
    list_filter = ("enabled", "review_required", "sdp_auth_type", "webhook_auth")
    search_fields = ("slug", "name", "sdp_base_url")
    actions = ("test_connection_selected", lift_budget_selected)
    change_form_template = "admin/tickets/tenant/change_form.html"

    def get_fieldsets(self, request: HttpRequest, obj: Tenant | None = None) -> _FieldsetSpec:
        """Return the layout; the secret fields only for users who may change the tenant."""
        can_change = obj is None or self.has_change_permission(request, obj)
        webhook = ["webhook_url_display", "webhook_auth", "secret_state"]
        sdp = ["sdp_base_url", "sdp_auth_type", "api_key_state"]
        zoho = ["zoho_accounts_url", "zoho_client_id", "zoho_state"]
        if can_change:
            webhook += ["new_webhook_secret", "rotate_webhook_secret"]
            sdp += ["new_sdp_api_key", "clear_sdp_api_key"]
            zoho += ["new_zoho_client_secret", "new_zoho_refresh_token"]
        return [
            (None, {"fields": ["slug", "name", "enabled", "review_required"]}),
            ("Webhook (configure this in SDP)", {"fields": tuple(webhook)}),
            ("ServiceDesk Plus API", {"fields": tuple(sdp)}),
            ("SDP Cloud token renewal (Zoho OAuth)", {"fields": tuple(zoho), "classes": ["collapse"]}),
            ("Limits and model", {"fields": ["llm_model", "note_language", "rate_limit_per_minute"]}),
            (
                "Daily AI budget (denial of wallet)",
                {"fields": ["llm_daily_token_budget", "llm_daily_cost_cap", "ai_budget_today"]},
            ),
            (
                "Outage clusters, updates and urgency",
                {
                    "fields": [
                        "cluster_window_minutes",
                        "cluster_threshold",
                        "refresh_interval_minutes",
                        "vip_requesters",
                    ]
                },
            ),
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Tenant | None = None) -> tuple[str, ...]:
        """Return the display-only fields; the slug is fixed once the webhook URL is in use."""
        fixed = ("webhook_url_display", "secret_state", "api_key_state", "zoho_state", "ai_budget_today")
        return (*fixed, "slug") if obj is not None else fixed

    @admin.display(description="AI use today")
    def ai_budget_today(self, obj: Tenant) -> str:
        """Return today's tokens and estimated cost against the budget."""
        return budget_today(obj)

    @admin.display(description="SDP API key")
    def api_key_state(self, obj: Tenant) -> str:
        """Return whether a key is stored, never the key."""
        return "set (hidden)" if obj.sdp_api_key else "not set"

    @admin.display(description="Zoho client secret and refresh token")
    def zoho_state(self, obj: Tenant) -> str:
        """Return whether the renewal credentials are stored, never the credentials."""
        if obj.can_refresh_token:
            expires = obj.sdp_token_expires_at
            return "set (hidden)" + (f"; access token valid until {expires:%Y-%m-%d %H:%M} UTC" if expires else "")
        return "not set"

    @admin.display(description="Webhook secret")
    def secret_state(self, obj: Tenant) -> str:
        """Return whether a secret is stored, never the secret."""
        return "set (hidden)" if obj.webhook_secret else "not set"

    @admin.display(description="Webhook URL")
    def webhook_url_display(self, obj: Tenant) -> SafeString | str:
        """Return the URL to configure in SDP and what SDP must send."""
        if obj.pk is None:
            return "Shown after saving."
        how = (
            "Sign with Standard Webhooks headers (webhook-id, webhook-timestamp, webhook-signature)."
            if obj.webhook_auth == Tenant.WebhookAuth.HMAC
            else "Send the secret in the X-ServiceDesk-Token header."
        )
        return format_html(
            "<code>{}</code><br><span class='help'>POST, JSON body. {}</span>", webhook_url_build(tenant=obj), how
        )

    def save_model(self, request: HttpRequest, obj: Tenant, form: forms.ModelForm, change: bool) -> None:
        """Create or update the tenant through the service; remember a generated secret to show it once."""
        data = form.cleaned_data
        api_key = "" if data.get("clear_sdp_api_key") else (data.get("new_sdp_api_key") or None)
        result = tenant_create_or_update(
            slug=obj.slug,
            name=data["name"],
            sdp_base_url=data["sdp_base_url"],
            sdp_auth_type=data["sdp_auth_type"],
            sdp_api_key=api_key,
            webhook_auth=data["webhook_auth"],
            webhook_secret=data.get("new_webhook_secret") or None,
            review_required=data["review_required"],
            enabled=data["enabled"],
            rotate_secret=bool(data.get("rotate_webhook_secret")),
            llm_model=data["llm_model"],
            note_language=data["note_language"],
            rate_limit_per_minute=data["rate_limit_per_minute"],
            llm_daily_token_budget=_or_default(data.get("llm_daily_token_budget")),
            llm_daily_cost_cap=_or_default(data.get("llm_daily_cost_cap")),
            cluster_window_minutes=data["cluster_window_minutes"],
            cluster_threshold=data["cluster_threshold"],
            refresh_interval_minutes=data["refresh_interval_minutes"],
            vip_requesters=data["vip_requesters"],
            zoho_accounts_url=data["zoho_accounts_url"],
            zoho_client_id=data["zoho_client_id"],
            zoho_client_secret=data.get("new_zoho_client_secret") or None,
            zoho_refresh_token=data.get("new_zoho_refresh_token") or None,
        )
        obj.pk = result.tenant.pk
        obj.refresh_from_db()
        obj._state.adding = False
        if result.secret and not data.get("new_webhook_secret"):
            request._te_new_secret = result.secret  # type: ignore[attr-defined]

    def _secret_page(self, request: HttpRequest, obj: Tenant) -> HttpResponse | None:
        secret = getattr(request, "_te_new_secret", None)
        if not secret:
            return None
        notes = [
            f"Webhook URL: {webhook_url_build(tenant=obj)}",
            "Copy the secret now: it is stored encrypted and never shown again.",
        ]
        shown = [("Webhook secret", secret)]
        if obj.webhook_auth == Tenant.WebhookAuth.HMAC:
            shown.append(("Signing key for an SDP Deluge function", webhook_secret_decode(secret=secret)))
        return secret_once_response(
            request,
            self.admin_site,
            title=f"New webhook secret for {obj}",
            secrets=shown,
            notes=notes,
            back_url=reverse("admin:tickets_tenant_change", args=[obj.pk]),
        )

    def response_add(self, request: HttpRequest, obj: Tenant, post_url_continue: str | None = None) -> HttpResponse:
        """Show a generated secret once, else continue as usual."""
        return self._secret_page(request, obj) or super().response_add(request, obj, post_url_continue)

    def response_change(self, request: HttpRequest, obj: Tenant) -> HttpResponse:
        """Show a generated secret once, else continue as usual."""
        return self._secret_page(request, obj) or super().response_change(request, obj)

    # --- test connection ------------------------------------------------------------------------
    def get_urls(self) -> list[URLPattern]:
        """Return the admin URLs plus the connection test."""
        own = [
            path(
                "<int:object_id>/test-connection/",
                self.admin_site.admin_view(self.test_connection_view),
                name="tickets_tenant_test_connection",
            ),
            path(
                "<int:object_id>/lift-budget/",
                self.admin_site.admin_view(self.lift_budget_view),
                name="tickets_tenant_lift_budget",
            ),
        ]
        return own + super().get_urls()

    def test_connection_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        """Call the tenant's SDP and report the outcome (POST, by users who may change the tenant)."""
        tenant = get_object_or_404(Tenant, pk=object_id)
        if request.method != "POST" or not self.has_change_permission(request, tenant):
            raise PermissionDenied
        ok, message = connection_test(tenant)
        self.message_user(request, message, messages.SUCCESS if ok else messages.ERROR)
        return HttpResponseRedirect(reverse("admin:tickets_tenant_change", args=[tenant.pk]))

    def lift_budget_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        """Lift the tenant's AI budget for today (POST, by users who may change the tenant; audited)."""
        tenant = get_object_or_404(Tenant, pk=object_id)
        if request.method != "POST" or not self.has_change_permission(request, tenant):
            raise PermissionDenied
        budget_lift(self, request, tenant)
        return HttpResponseRedirect(reverse("admin:tickets_tenant_change", args=[tenant.pk]))

    @admin.action(description="Test connection to SDP", permissions=["change"])
    def test_connection_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        """Call each selected tenant's SDP and report the outcome."""
        for tenant in queryset[:20]:
            ok, message = connection_test(tenant)
            self.message_user(request, message, messages.SUCCESS if ok else messages.ERROR)


@admin.register(Ticket)
class TicketAdmin(admin.ModelAdmin):
    """Tickets: new ones being enhanced and the resolved history searches use."""

    list_display = (
        "sdp_id",
        "subject",
        "tenant",
        "status",
        "priority",
        "category",
        "is_resolved",
        "source",
        "sdp_created_at",
    )
    list_display_links = ("sdp_id", "subject")
    list_filter = ("tenant", "is_resolved", "source")
    list_select_related = ("tenant",)
    search_fields = ("=sdp_id", "subject", "requester_email")
    search_help_text = "Search by SDP request id (exact), subject or requester email."
    ordering = ("-id",)
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = CappedCountPaginator
    readonly_fields = ("sdp_fetch", "language", "embedding_model", "embedding_dim", "raw", "created_at", "updated_at")

    @admin.display(description="fetch from SDP")
    def sdp_fetch(self, obj: Ticket) -> str:
        """Say whether the text a minimal resolved event lacked is still being fetched, or why that stopped."""
        fetch = TicketFetch.objects.filter(pk=obj.pk).first()
        if fetch is None:
            return "-"
        if fetch.due_at is None:
            return f"Gave up after {fetch.attempts} attempt(s): {fetch.error}"
        return f"Due {fetch.due_at:%Y-%m-%d %H:%M:%S} UTC (attempts so far: {fetch.attempts}) {fetch.error}".strip()


@admin.register(Asset)
class AssetAdmin(admin.ModelAdmin):
    """The inventory matched by IP or hostname."""

    list_display = ("hostname", "ip", "role", "location", "owner", "tenant")
    list_filter = ("tenant",)
    list_select_related = ("tenant",)
    search_fields = ("hostname", "=ip", "role", "owner", "location")
    show_full_result_count = False
    paginator = CappedCountPaginator


@admin.register(KnowledgeArticle)
class KnowledgeArticleAdmin(admin.ModelAdmin):
    """Knowledge articles suggested alongside enhancements."""

    list_display = ("title", "tenant", "tags", "url", "updated_at")
    list_filter = ("tenant",)
    list_select_related = ("tenant",)
    search_fields = ("title", "tags", "body")
    show_full_result_count = False
    paginator = CappedCountPaginator
