"""Triage records: per-tenant settings, the tenant's SDP choice lists, every decision we made, calibrations."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from tickets.models import Tenant, Ticket


class TriageField(models.TextChoices):
    """The routing fields triage can suggest or write. `category` covers its subcategory too."""

    CATEGORY = "category", "Category and subcategory"
    PRIORITY = "priority", "Priority"
    GROUP = "group", "Support group"
    TECHNICIAN = "technician", "Technician"


class TriageMode(models.TextChoices):
    OFF = "off", "Off"
    SUGGEST = "suggest", "Suggest (note and admin only)"
    APPLY = "apply", "Apply when confident"


class TriageSetting(models.Model):
    """How one tenant wants one field triaged: off, suggested, or applied at or above a confidence."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="triage_settings")
    field = models.CharField(max_length=16, choices=TriageField.choices)
    mode = models.CharField(max_length=8, choices=TriageMode.choices, default=TriageMode.SUGGEST)
    threshold = models.FloatField(
        default=0.9,
        help_text="Apply only at or above this calibrated confidence (0..1). The dashboard shows how often "
        "suggestions at each confidence were right.",
    )
    default_value = models.CharField(
        max_length=200,
        blank=True,
        help_text="The value SDP gives new requests when nobody chose one (e.g. priority “Medium”, group "
        "“Service Desk”). A field still at this value counts as unset and may be written.",
    )

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "field"], name="triage_setting_unique_field")]
        ordering = ["tenant", "field"]

    def __str__(self) -> str:
        return f"{self.tenant.slug}: {self.field} {self.mode}"


class SdpChoice(models.Model):
    """One value of a tenant's SDP list (category, subcategory, priority, group, technician), cached."""

    class Kind(models.TextChoices):
        CATEGORY = "category", "Category"
        SUBCATEGORY = "subcategory", "Subcategory"
        PRIORITY = "priority", "Priority"
        GROUP = "group", "Support group"
        TECHNICIAN = "technician", "Technician"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="sdp_choices")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    sdp_id = models.CharField("SDP id", max_length=64)
    name = models.CharField(max_length=200)
    parent = models.CharField(
        max_length=200, blank=True, help_text="A subcategory's category; a technician's groups, comma-separated."
    )
    description = models.TextField(
        blank=True,
        help_text="Written by a lead, given to the model: what this group handles (“NET = network team: "
        "firewalls, VPN”). Kept when the list is refreshed.",
    )
    active = models.BooleanField(default=True, help_text="False once SDP no longer lists it: never written.")
    fetched_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "kind", "sdp_id"], name="sdp_choice_unique"),
        ]
        indexes = [models.Index(fields=["tenant", "kind", "active"], name="sdp_choice_tenant_kind")]
        ordering = ["tenant", "kind", "parent", "name"]
        verbose_name = "SDP choice"

    def __str__(self) -> str:
        prefix = f"{self.parent} / " if self.parent and self.kind == self.Kind.SUBCATEGORY else ""
        return f"{self.get_kind_display()}: {prefix}{self.name}"


class TriageDecision(models.Model):
    """What triage suggested for one field of one ticket, whether it was written, and how it ended."""

    class Outcome(models.TextChoices):
        SUGGESTED = "suggested", "Suggested only"
        LOW_CONFIDENCE = "low_confidence", "Below the threshold"
        NOT_IN_LIST = "not_in_list", "Not in the tenant's SDP list"
        HUMAN_SET = "human_set", "Left alone: a person had set it"
        AWAITING_REVIEW = "awaiting_review", "Held until a lead approves the note"
        PENDING = "pending", "Write pending"
        APPLIED = "applied", "Written to SDP"
        FAILED = "failed", "Write failed"
        UNDONE = "undone", "Undone"
        REJECTED = "rejected", "Rejected by a lead: not written"

    class Acceptance(models.TextChoices):
        KEPT = "kept", "Kept"
        CHANGED = "changed", "Changed by a person"
        NEVER_APPLIED = "never_applied", "Never applied"

    enhancement = models.ForeignKey(
        "enhancements.Enhancement", on_delete=models.CASCADE, related_name="triage_decisions"
    )
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    ticket = models.ForeignKey(Ticket, on_delete=models.CASCADE, related_name="triage_decisions")
    field = models.CharField(max_length=16, choices=TriageField.choices)
    value = models.CharField(max_length=200, blank=True, help_text="The suggested value (by name).")
    subvalue = models.CharField(max_length=200, blank=True, help_text="The suggested subcategory, for category.")
    confidence = models.FloatField(null=True, blank=True, help_text="Calibrated, 0..1.")
    raw_score = models.FloatField(null=True, blank=True, help_text="Before calibration.")
    sub_confidence = models.FloatField(null=True, blank=True)
    provider = models.CharField(max_length=32, blank=True)
    model = models.CharField(max_length=100, blank=True)
    mode = models.CharField(max_length=8, choices=TriageMode.choices, help_text="The tenant's mode at the time.")
    threshold = models.FloatField(null=True, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.SUGGESTED)
    reason = models.TextField(blank=True, help_text="Why it was (not) written, in a lead's words.")
    seen_value = models.CharField(max_length=200, blank=True, help_text="The field's value when we triaged.")
    previous_value = models.CharField(max_length=200, blank=True, help_text="What SDP had before our write.")
    previous_subvalue = models.CharField(max_length=200, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    write_started_at = models.DateTimeField(null=True, blank=True, help_text="Set before the PUT is sent.")
    written_at = models.DateTimeField(null=True, blank=True)
    undone_at = models.DateTimeField(null=True, blank=True)
    undone_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    undo_note_id = models.CharField(max_length=64, blank=True)
    final_value = models.CharField(max_length=200, blank=True, help_text="The value when the ticket was resolved.")
    final_subvalue = models.CharField(max_length=200, blank=True)
    acceptance = models.CharField(max_length=16, choices=Acceptance.choices, blank=True)
    correct = models.BooleanField(null=True, blank=True, help_text="Whether the suggestion equals the final value.")
    evaluated_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["enhancement", "field"], name="triage_decision_one_per_field"),
        ]
        indexes = [
            models.Index(fields=["tenant", "-created_at"], name="triage_decision_tenant"),
            models.Index(fields=["outcome"], name="triage_decision_outcome"),
        ]
        ordering = ["-created_at", "field"]

    def __str__(self) -> str:
        return f"{self.field} → {self.value or '—'} ({self.get_outcome_display()})"


class TriageCalibration(models.Model):
    """A tenant's mapping from the neighbour vote's raw agreement to a probability of being right, per field."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="triage_calibrations")
    field = models.CharField(max_length=16)  # a TriageField or "subcategory"
    points = models.JSONField(default=list, help_text="[[raw score, probability], ...], increasing.")
    samples = models.PositiveIntegerField(default=0)
    report = models.JSONField(default=dict, blank=True, help_text="Leave-one-out accuracy and coverage.")
    fitted_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "field"], name="triage_calibration_unique")]

    def __str__(self) -> str:
        return f"{self.tenant.slug}: {self.field} ({self.samples} samples)"
