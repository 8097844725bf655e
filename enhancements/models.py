"""The pipeline's records: one Enhancement per attempt to enhance a ticket, and feedback on it."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from tickets.models import Tenant, Ticket


class Enhancement(models.Model):
    """One enhancement of one ticket; every step of its life is recorded here."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        AWAITING_REVIEW = "awaiting_review", "Awaiting review"
        POSTED = "posted", "Posted"
        COMPLETED = "completed", "Completed (dry run)"
        FAILED = "failed", "Failed"
        REJECTED = "rejected", "Rejected"

    class Trigger(models.TextChoices):
        WEBHOOK = "webhook", "Webhook"
        RERUN = "rerun", "Re-run"
        UPDATE = "update", "Ticket updated"

    ACTIVE_STATUSES = (Status.QUEUED, Status.RUNNING)
    FINAL_STATUSES = (Status.POSTED, Status.COMPLETED, Status.FAILED, Status.REJECTED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # No index of its own: enhancement_tenant_created leads with tenant_id.
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="enhancements", db_index=False)
    ticket = models.ForeignKey(Ticket, on_delete=models.CASCADE, related_name="enhancements")
    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.WEBHOOK)
    # NULL (not "") so the unique constraint ignores deliveries without an id.
    delivery_id = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001
    request_id = models.CharField(max_length=64, blank=True, help_text="Request id of the webhook call.")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    # Set by the worker running the attempt (claim, then every ENHANCEMENT_HEARTBEAT_SECONDS): a running row
    # whose beat stopped belongs to a dead worker, however long a live one's LLM call takes.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=100, blank=True, help_text="host:pid of the worker running the attempt.")
    finished_at = models.DateTimeField(null=True, blank=True)
    context = models.JSONField(default=dict, blank=True)
    provider = models.CharField(max_length=32, blank=True)
    model = models.CharField(max_length=100, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    over_budget = models.BooleanField(
        "AI budget reached",
        default=False,
        help_text="The tenant's daily AI budget was spent: the note was written offline (tickets/ai_budget.py).",
    )
    output = models.JSONField(default=dict, blank=True)
    note_html = models.TextField(blank=True)
    post_started_at = models.DateTimeField(
        null=True, blank=True, help_text="Set before the note is sent: an unclear outcome is checked first."
    )
    sdp_note_id = models.CharField(max_length=64, blank=True)
    posted_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    timings = models.JSONField(default=dict, blank=True, help_text="Milliseconds per stage.")
    urgency = models.JSONField(default=list, blank=True, help_text="Urgency cues: kind, label, evidence.")
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_index=False
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # One webhook-triggered enhancement per ticket: SDP retries and duplicate events are
            # answered "duplicate". Re-runs are separate rows.
            models.UniqueConstraint(
                fields=["ticket"], condition=Q(trigger="webhook"), name="enhancement_one_webhook_per_ticket"
            ),
            models.UniqueConstraint(
                fields=["tenant", "delivery_id"],
                condition=Q(delivery_id__isnull=False),
                name="enhancement_unique_delivery",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="enhancement_status_next"),
            models.Index(fields=["tenant", "-created_at"], name="enhancement_tenant_created"),
            # The admin's review list is newest first across tenants: without this, a sort of every row.
            models.Index(fields=["-created_at"], name="enhancement_created"),
            # Only reviewed rows (a user's deletion sets them NULL): a webhook's insert has nothing to add here.
            models.Index(
                fields=["reviewed_by"], condition=Q(reviewed_by__isnull=False), name="enhancement_reviewed_by"
            ),
        ]

    def __str__(self) -> str:
        return f"Enhancement {self.id} of #{self.ticket.sdp_id if self.ticket_id else '?'}"


class Feedback(models.Model):
    """A reviewer's or technician's rating of one enhancement."""

    class Rating(models.TextChoices):
        HELPFUL = "helpful", "Helpful"
        NOT_HELPFUL = "not_helpful", "Not helpful"

    enhancement = models.ForeignKey(Enhancement, on_delete=models.CASCADE, related_name="feedback")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    technician_email = models.EmailField(blank=True)
    # The API token a rating came through: the email it names is the caller's claim; the token is who sent it.
    api_token = models.ForeignKey(
        "ApiToken", null=True, blank=True, on_delete=models.SET_NULL, related_name="feedback", verbose_name="via token"
    )
    rating = models.CharField(max_length=16, choices=Rating.choices)
    comment = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "feedback"
        constraints = [
            # One rating per enhancement per rater: a token rating for no one, or for one technician.
            models.UniqueConstraint(
                fields=["enhancement", "api_token", "technician_email"],
                condition=Q(api_token__isnull=False),
                name="feedback_one_per_token_rater",
            )
        ]

    def __str__(self) -> str:
        return f"{self.get_rating_display()} on {self.enhancement_id}"


class ApiToken(models.Model):
    """A read-API token that sees and rates only its tenant's enhancements; the key is stored hashed."""

    name = models.CharField(max_length=100, help_text="Who uses it, e.g. “Acme SDP custom button”.")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_tokens")
    prefix = models.CharField(max_length=12, editable=False, help_text="The first characters, to recognise it.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["tenant", "name"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class TicketUpdate(models.Model):
    """One request_updated event: stored by the webhook, checked by the worker for new information.

    Our own notes and field writes fire SDP's edit triggers too; the check compares content, not events, so they
    end here as "unchanged" and never cause another enhancement.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Checking"
        REFRESHED = "refreshed", "Refreshed (new enhancement)"
        UNCHANGED = "unchanged", "No new information"
        IGNORED = "ignored", "Ignored"
        FAILED = "failed", "Failed"

    ACTIVE_STATUSES = (Status.PENDING, Status.RUNNING)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="ticket_updates")
    sdp_id = models.CharField("SDP id", max_length=32)
    delivery_id = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001 - NULL skips the constraint
    request_id = models.CharField(max_length=64, blank=True)
    payload = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    reason = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    received_at = models.DateTimeField(auto_now_add=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    enhancement = models.ForeignKey(
        Enhancement, null=True, blank=True, on_delete=models.SET_NULL, related_name="ticket_updates"
    )

    class Meta:
        ordering = ["-received_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "delivery_id"],
                condition=Q(delivery_id__isnull=False),
                name="ticketupdate_unique_delivery",
            )
        ]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="ticketupdate_status_next"),
            models.Index(fields=["tenant", "sdp_id", "-received_at"], name="ticketupdate_ticket"),
        ]

    def __str__(self) -> str:
        return f"Update of #{self.sdp_id} ({self.get_status_display()})"


class RateCounter(models.Model):
    """A per-tenant webhook counter for one minute, used when there is no Redis (enhancements/ratelimit.py)."""

    key = models.CharField(max_length=100, primary_key=True)
    count = models.PositiveIntegerField(default=0)
    expires_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"{self.key}: {self.count}"


# Triage's records live in their own module; importing them here registers them with this app.
from enhancements.triage.models import (  # noqa: E402, F401
    SdpChoice,
    TriageCalibration,
    TriageDecision,
    TriageSetting,
)
