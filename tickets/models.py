"""The ServiceDesk side: tenants, ticket history, inventory and knowledge articles."""

from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from tickets.fields import BitCodeField, EncryptedTextField


def field_max_lengths(model: type[models.Model]) -> dict[str, int]:
    """Return {field name: max_length} for the model's fields that have a maximum length."""
    return {f.name: f.max_length for f in model._meta.concrete_fields if isinstance(f.max_length, int)}


class Tenant(models.Model):
    """An MSP customer whose ServiceDesk Plus instance calls our webhook."""

    class AuthType(models.TextChoices):
        AUTHTOKEN = "authtoken", "On-premises (authtoken)"
        ZOHO_OAUTH = "zoho_oauth", "Cloud (Zoho OAuth token)"

    class WebhookAuth(models.TextChoices):
        HMAC = "hmac", "HMAC signature (Standard Webhooks)"
        TOKEN = "token", "Shared token header (X-ServiceDesk-Token)"

    slug = models.SlugField(max_length=64, unique=True, help_text="Used in the webhook URL.")
    name = models.CharField(max_length=200)
    sdp_base_url = models.URLField(
        "SDP base URL",
        blank=True,
        help_text="e.g. https://sdp.example.com or https://sdpondemand.manageengine.com/app/itdesk",
    )
    sdp_auth_type = models.CharField(max_length=16, choices=AuthType.choices, default=AuthType.AUTHTOKEN)
    sdp_api_key = EncryptedTextField("SDP API key", blank=True, default="")
    # SDP Cloud access tokens expire (about an hour): with a Zoho refresh token and client the worker
    # renews sdp_api_key itself (docs/servicedesk-api.md, "Base URLs and authentication").
    zoho_accounts_url = models.URLField(
        "Zoho accounts URL",
        blank=True,
        default="https://accounts.zoho.com",
        help_text="The accounts server of the tenant's data centre, e.g. https://accounts.zoho.eu",
    )
    zoho_client_id = models.CharField("Zoho client id", max_length=200, blank=True)
    zoho_client_secret = EncryptedTextField("Zoho client secret", blank=True, default="")
    zoho_refresh_token = EncryptedTextField("Zoho refresh token", blank=True, default="")
    sdp_token_expires_at = models.DateTimeField(
        "access token expires at", null=True, blank=True, help_text="Set when the token was obtained by refresh."
    )
    webhook_auth = models.CharField(max_length=8, choices=WebhookAuth.choices, default=WebhookAuth.HMAC)
    webhook_secret = EncryptedTextField(blank=True, default="")
    review_required = models.BooleanField(
        default=False, help_text="Hold every enhancement for a support lead's approval before posting."
    )
    enabled = models.BooleanField(default=True)
    llm_model = models.CharField("LLM model override", max_length=100, blank=True)
    note_language = models.CharField(
        max_length=8,
        default="en",
        blank=True,
        help_text="Language the LLM writes notes in (ISO 639-1, e.g. en, de, fr; empty: English).",
    )
    rate_limit_per_minute = models.PositiveIntegerField(default=600, help_text="0 disables the limit.")
    # The daily AI cost guard (tickets/ai_budget.py); empty = the deployment's default, 0 = unlimited.
    llm_daily_token_budget = models.PositiveBigIntegerField(
        "daily AI token budget",
        null=True,
        blank=True,
        help_text="Tokens the LLM may use per day for this tenant (enhancements and triage). Empty: the default "
        "LLM_DAILY_TOKEN_BUDGET; 0: unlimited. Past it, notes are written offline until the next day.",
    )
    llm_daily_cost_cap = models.DecimalField(
        "daily AI cost cap",
        max_digits=12,
        decimal_places=2,
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="Estimated cost per day (LLM_PRICES) after which notes are written offline. Empty: the default "
        "LLM_DAILY_COST_CAP; 0: no cap.",
    )
    # Outage clusters, refreshed notes and urgency cues (issue 14).
    cluster_window_minutes = models.PositiveIntegerField(
        default=30,
        validators=[MinValueValidator(1), MaxValueValidator(24 * 60)],
        help_text="New tickets about the same problem within this many minutes form an outage cluster.",
    )
    cluster_threshold = models.PositiveIntegerField(
        default=3,
        validators=[MinValueValidator(2), MaxValueValidator(1000)],
        help_text="How many such tickets make a cluster.",
    )
    refresh_interval_minutes = models.PositiveIntegerField(
        default=15,
        help_text="When a ticket gains information, at most one updated note per ticket per this many minutes; "
        "0 turns refreshing off.",
    )
    vip_requesters = models.TextField(
        "VIP requesters",
        blank=True,
        help_text="One email address or full name per line; their tickets get a VIP badge.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return f"{self.name} ({self.slug})"

    @property
    def can_refresh_token(self) -> bool:
        """Return whether the tenant's SDP Cloud access token can be renewed with a refresh token."""
        return bool(
            self.sdp_auth_type == self.AuthType.ZOHO_OAUTH
            and self.zoho_refresh_token
            and self.zoho_client_id
            and self.zoho_client_secret
        )

    @property
    def has_sdp_credentials(self) -> bool:
        """Return whether we can call this tenant's SDP."""
        return bool(self.sdp_base_url and (self.sdp_api_key or self.can_refresh_token))


class Ticket(models.Model):
    """A ServiceDesk Plus request: new ones we enhance, resolved ones form the history we search."""

    class Source(models.TextChoices):
        WEBHOOK = "webhook", "Webhook"
        IMPORT = "import", "Import"
        API = "api", "SDP API"

    RESOLVED_STATUSES = ("Resolved", "Closed")

    # No index of its own: ticket_unique_per_tenant and ticket_tenant_resolved both lead with tenant_id.
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="tickets", db_index=False)
    sdp_id = models.CharField("SDP id", max_length=32)
    subject = models.CharField(max_length=500, blank=True)
    description = models.TextField(blank=True, help_text="Plain text; HTML stripped.")
    status = models.CharField(max_length=64, blank=True)
    priority = models.CharField(max_length=64, blank=True)
    category = models.CharField(max_length=200, blank=True)
    requester_name = models.CharField(max_length=200, blank=True)
    requester_email = models.CharField(max_length=254, blank=True)
    technician = models.CharField(max_length=200, blank=True)
    resolution = models.TextField(blank=True, help_text="Plain text; HTML stripped.")
    sdp_created_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.WEBHOOK)
    is_resolved = models.BooleanField(default=False, help_text="Resolved or closed: part of the searchable history.")
    raw = models.JSONField(default=dict, blank=True)
    language = models.CharField(max_length=8, blank=True, help_text="Detected language (ISO 639-1), if known.")
    # The embedding of subject + description (tickets/embeddings.py): int8-quantised, normalised vector, its
    # sign bits for a Hamming prefilter, and which model made it (a ticket of another model is re-embedded).
    embedding = models.BinaryField(null=True, blank=True, editable=False)
    embedding_code = BitCodeField(null=True, blank=True, editable=False)
    embedding_model = models.CharField(max_length=100, blank=True, editable=False)
    embedding_dim = models.PositiveSmallIntegerField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "sdp_id"], name="ticket_unique_per_tenant")]
        indexes = [
            models.Index(fields=["tenant", "is_resolved"], name="ticket_tenant_resolved"),
            # The repeated-problem cue looks up a requester's recent tickets.
            models.Index(fields=["tenant", "requester_email", "created_at"], name="ticket_tenant_requester"),
            # The semantic window's incremental read: its rows written since (tickets/search/window.py).
            models.Index(
                fields=["tenant", "updated_at"],
                condition=Q(is_resolved=True, embedding_code__isnull=False),
                name="ticket_window_written",
            ),
        ]
        ordering = ["-sdp_created_at", "-id"]

    def __str__(self) -> str:
        return f"#{self.sdp_id} {self.subject}".strip()

    @property
    def is_complete(self) -> bool:
        """Return whether the ticket has the text an enhancement needs."""
        return bool(self.subject or self.description)


class Asset(models.Model):
    """An inventory record the enhancer can match by IP or hostname."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="assets")
    ip = models.GenericIPAddressField("IP", null=True, blank=True)
    hostname = models.CharField(max_length=253, blank=True, help_text="Stored lower-case.")
    role = models.CharField(max_length=200, blank=True)
    location = models.CharField(max_length=200, blank=True)
    owner = models.CharField(max_length=200, blank=True)
    notes = models.TextField(blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "hostname"], condition=~Q(hostname=""), name="asset_unique_hostname"
            ),
            models.UniqueConstraint(fields=["tenant", "ip"], condition=Q(ip__isnull=False), name="asset_unique_ip"),
            models.CheckConstraint(condition=~Q(hostname="") | Q(ip__isnull=False), name="asset_has_ip_or_hostname"),
        ]
        ordering = ["hostname", "ip"]

    def __str__(self) -> str:
        return self.hostname or str(self.ip)


class KnowledgeArticle(models.Model):
    """A knowledge-base article that can be suggested alongside an enhancement."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="articles")
    title = models.CharField(max_length=300)
    url = models.URLField(blank=True, max_length=500)
    body = models.TextField(blank=True)
    tags = models.CharField(max_length=500, blank=True, help_text="Comma-separated.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "title"], name="article_unique_title")]
        ordering = ["title"]

    def __str__(self) -> str:
        return self.title


class TicketImport(models.Model):
    """One import_tickets run window for a tenant and how far it got, so an interrupted run can continue."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="ticket_imports")
    since = models.DateTimeField(help_text="Import tickets resolved from this time...")
    until = models.DateTimeField(help_text="...up to this time.")
    resolved_through = models.DateTimeField(
        null=True, blank=True, help_text="Every ticket resolved before this time is stored (the resume point)."
    )
    created = models.PositiveIntegerField(default=0)
    updated = models.PositiveIntegerField(default=0)
    unchanged = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"{self.tenant.slug}: {self.since:%Y-%m-%d} .. {self.until:%Y-%m-%d}"


class TicketFetch(models.Model):
    """A resolved ticket whose event carried only part of it: the worker fetches the rest from SDP."""

    ticket = models.OneToOneField(Ticket, on_delete=models.CASCADE, primary_key=True, related_name="fetch")
    due_at = models.DateTimeField(null=True, blank=True, help_text="Fetch after this; empty once it gave up.")
    attempts = models.PositiveSmallIntegerField(default=0)
    error = models.CharField(max_length=500, blank=True, help_text="Why the last fetch from SDP failed.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["due_at"], condition=Q(due_at__isnull=False), name="ticketfetch_due")]

    def __str__(self) -> str:
        return f"fetch of {self.ticket}"


class LlmUsage(models.Model):
    """One tenant's LLM use on one day (the budget's day), added to by one UPSERT per call (tickets/ai_budget.py)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="llm_usage")
    day = models.DateField()
    calls = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    tokens = models.PositiveBigIntegerField(default=0, help_text="Prompt plus completion tokens.")
    cost_micros = models.PositiveBigIntegerField(default=0, help_text="Estimated cost, in millionths.")
    extra_tokens = models.PositiveBigIntegerField(default=0, help_text="Tokens an operator added to today's budget.")
    extra_cost_micros = models.PositiveBigIntegerField(default=0, help_text="Cost an operator added to today's cap.")
    lifted_at = models.DateTimeField(null=True, blank=True)
    lifted_by = models.CharField(max_length=150, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "day"], name="llm_usage_one_row_per_day")]
        ordering = ["-day", "tenant"]
        verbose_name = "LLM usage"
        verbose_name_plural = "LLM usage"

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.day}: {self.tokens} tokens"
