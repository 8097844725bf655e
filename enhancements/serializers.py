"""Serializers of the read API: enhancements out, feedback in, and the list filters."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from enhancements.models import Enhancement, Feedback
from tickets.models import Tenant
from tickets.sdp.links import ticket_url


class TicketSummarySerializer(serializers.Serializer):
    """The ticket an enhancement is about."""

    sdp_id = serializers.CharField()
    subject = serializers.CharField()
    url = serializers.SerializerMethodField(help_text="The request in the tenant's SDP, when its URL is known.")

    def get_url(self, ticket: Any) -> str:
        """Return the SDP URL of the ticket."""
        return ticket_url(ticket.tenant, ticket.sdp_id)


class EnhancementListSerializer(serializers.ModelSerializer):
    """An enhancement in a list: state, timings and ratings, without the note."""

    tenant: serializers.SlugRelatedField[Tenant] = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    ticket = TicketSummarySerializer(read_only=True)
    helpful = serializers.IntegerField(read_only=True, source="helpful_count")
    not_helpful = serializers.IntegerField(read_only=True, source="not_helpful_count")

    class Meta:
        model = Enhancement
        fields = [
            "id",
            "tenant",
            "ticket",
            "status",
            "trigger",
            "attempts",
            "created_at",
            "started_at",
            "finished_at",
            "posted_at",
            "provider",
            "model",
            "prompt_tokens",
            "completion_tokens",
            "error",
            "helpful",
            "not_helpful",
        ]
        read_only_fields = fields


class EnhancementDetailSerializer(EnhancementListSerializer):
    """One enhancement with its note, structured output, context and timings."""

    class Meta(EnhancementListSerializer.Meta):
        fields = [
            *EnhancementListSerializer.Meta.fields,
            "note_html",
            "output",
            "context",
            "timings",
            "sdp_note_id",
            "reviewed_at",
        ]
        read_only_fields = fields


class FeedbackInSerializer(serializers.Serializer):
    """A technician's rating."""

    rating = serializers.ChoiceField(choices=Feedback.Rating.choices)
    comment = serializers.CharField(required=False, allow_blank=True, max_length=2000, default="")
    technician_email = serializers.EmailField(
        required=False, allow_blank=True, default="", help_text="Who rates; a second rating by them replaces the first."
    )


class FeedbackOutSerializer(serializers.ModelSerializer):
    """A stored rating."""

    enhancement = serializers.UUIDField(source="enhancement_id", read_only=True)
    # Blank when the rating names no technician (the model field allows it; read-only would document email only).
    technician_email = serializers.EmailField(read_only=True, allow_blank=True)
    rated_via = serializers.CharField(
        source="api_token.name",
        read_only=True,
        allow_null=True,
        default=None,
        help_text="The API token the rating came through (the technician email is that caller's claim).",
    )

    class Meta:
        model = Feedback
        fields = ["id", "enhancement", "rating", "comment", "technician_email", "rated_via", "created_at"]
        read_only_fields = fields


class EnhancementFilterSerializer(serializers.Serializer):
    """Query parameters of the list."""

    tenant = serializers.SlugField(required=False, help_text="Tenant slug.")
    ticket = serializers.CharField(required=False, max_length=32, help_text="SDP request id.")
    status = serializers.MultipleChoiceField(
        choices=Enhancement.Status.choices, required=False, help_text="One or more statuses (repeat the parameter)."
    )
    date = serializers.DateField(required=False, help_text="Created on this day (UTC), YYYY-MM-DD.")
    created_after = serializers.DateTimeField(required=False, help_text="Created at or after (ISO 8601).")
    created_before = serializers.DateTimeField(required=False, help_text="Created before (ISO 8601).")

    def to_internal_value(self, data: Any) -> Any:
        """Refuse a parameter given with no value (`?date=`).

        DRF reads an empty query value as "not given" (HTML form semantics), so `?date=` listed everything while
        the schema says a date is required there; an empty filter is a client mistake worth naming.
        """
        values = data.getlist if hasattr(data, "getlist") else lambda name: [data[name]]
        empty = sorted(name for name in list(self.fields) if name in data and not any(values(name)))
        if empty:
            raise serializers.ValidationError(
                {name: ["This parameter is empty: give a value or leave it out."] for name in empty}
            )
        return super().to_internal_value(data)


class ErrorSerializer(serializers.Serializer):
    """The one error shape of every JSON answer (see project/errors.py)."""

    error = serializers.CharField(help_text="A stable code, e.g. `not_authenticated`, `not_found`, `invalid_payload`.")
    detail = serializers.CharField(help_text="A sentence for people.")
    # DRF moves declared fields off the class, so this does not replace Serializer.fields at run time.
    fields = serializers.DictField(  # type: ignore[assignment]
        required=False, help_text="With `invalid_payload`: the errors by field."
    )
