"""Outage clusters: a tenant's new tickets that look like one problem, and the notes that say so."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from tickets.models import Tenant, Ticket


class OutageCluster(models.Model):
    """New tickets of one tenant, within its window, that look like the same problem."""

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        DISMISSED = "dismissed", "Dismissed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="outage_clusters")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    formed_at = models.DateTimeField(auto_now_add=True, help_text="When the threshold was reached.")
    first_at = models.DateTimeField(help_text="When the earliest ticket of the cluster was created in SDP.")
    last_at = models.DateTimeField(help_text="When the latest ticket of the cluster was created in SDP.")
    size = models.PositiveIntegerField(default=0)
    common_words = models.JSONField(default=list, blank=True)
    hosts = models.JSONField(default=list, blank=True, help_text="Hosts, IPs and assets the tickets name.")
    dismissed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    dismissed_at = models.DateTimeField(null=True, blank=True)
    linked_at = models.DateTimeField(null=True, blank=True, help_text="When the requests were linked in SDP.")
    link_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-last_at"]
        indexes = [models.Index(fields=["tenant", "status", "-last_at"], name="cluster_tenant_status_last")]

    def __str__(self) -> str:
        return f"{self.size} tickets from {self.first_at:%Y-%m-%d %H:%M}"


class ClusterCandidate(models.Model):
    """A new ticket the cluster check has seen: its signature, its cluster and its follow-up note.

    Only new tickets get a row, so the check reads the tenant's recent rows through one index whatever the size of
    the ticket history.
    """

    class Followup(models.TextChoices):
        NONE = "", "None"
        PENDING = "pending", "Pending"
        POSTED = "posted", "Posted"
        SKIPPED = "skipped", "Not posted (dry run)"
        FAILED = "failed", "Failed"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    ticket = models.OneToOneField(Ticket, on_delete=models.CASCADE, related_name="cluster_candidate")
    at = models.DateTimeField(help_text="When the ticket was created in SDP (when we first saw it, if unknown).")
    signature = models.JSONField(default=dict)
    cluster = models.ForeignKey(OutageCluster, null=True, blank=True, on_delete=models.SET_NULL, related_name="members")
    joined_at = models.DateTimeField(null=True, blank=True)
    excluded = models.BooleanField(default=False, help_text="Split out by a lead: never clustered again.")
    followup_id = models.UUIDField(null=True, blank=True, help_text="The marker of the follow-up note.")
    followup_status = models.CharField(max_length=16, choices=Followup.choices, default="", blank=True)
    followup_started_at = models.DateTimeField(null=True, blank=True)
    followup_posted_at = models.DateTimeField(null=True, blank=True)
    followup_note_id = models.CharField(max_length=64, blank=True)
    followup_attempts = models.PositiveIntegerField(default=0)
    followup_error = models.TextField(blank=True)

    class Meta:
        ordering = ["at", "id"]
        indexes = [
            models.Index(fields=["tenant", "at"], name="candidate_tenant_at"),
            models.Index(fields=["followup_status"], name="candidate_followup"),
        ]

    def __str__(self) -> str:
        return f"#{self.ticket.sdp_id}" if self.ticket_id else "candidate"
