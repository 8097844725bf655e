"""The inbound webhook payload: only what the product reads is validated; unknown keys are ignored."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers


class _Named(serializers.Serializer):
    name = serializers.CharField(required=False, allow_blank=True, allow_null=True, max_length=500)


class _Requester(_Named):
    email_id = serializers.CharField(required=False, allow_blank=True, allow_null=True, max_length=254)


class _Time(serializers.Serializer):
    value = serializers.RegexField(r"^\d{1,15}$", required=False, allow_blank=True, allow_null=True)


class _Resolution(serializers.Serializer):
    content = serializers.CharField(required=False, allow_blank=True, allow_null=True, trim_whitespace=False)


class RequestSerializer(serializers.Serializer):
    """The parts of an SDP v3 request object the product reads."""

    id = serializers.RegexField(
        r"^[A-Za-z0-9_-]{1,32}$",
        error_messages={"invalid": "Must be the SDP request id: 1-32 letters, digits, '-' or '_'."},
    )
    subject = serializers.CharField(required=False, allow_blank=True, allow_null=True, trim_whitespace=False)
    description = serializers.CharField(required=False, allow_blank=True, allow_null=True, trim_whitespace=False)
    priority = _Named(required=False, allow_null=True)
    status = _Named(required=False, allow_null=True)
    category = _Named(required=False, allow_null=True)
    technician = _Named(required=False, allow_null=True)
    requester = _Requester(required=False, allow_null=True)
    created_time = _Time(required=False, allow_null=True)
    resolved_time = _Time(required=False, allow_null=True)
    completed_time = _Time(required=False, allow_null=True)
    resolution = _Resolution(required=False, allow_null=True)

    def to_internal_value(self, data: Any) -> Any:
        """Coerce a numeric id to a string, as SDP sends either."""
        if isinstance(data, dict) and isinstance(data.get("id"), int) and not isinstance(data.get("id"), bool):
            data = {**data, "id": str(data["id"])}
        return super().to_internal_value(data)


class WebhookSerializer(serializers.Serializer):
    """The webhook body."""

    event = serializers.CharField(required=False, default="request_created", max_length=64)
    delivery_id = serializers.CharField(required=False, allow_blank=True, allow_null=True, max_length=200)
    request = RequestSerializer()
