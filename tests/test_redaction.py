"""Redaction before text leaves for an LLM: personal data and secrets go, the technical facts stay."""

from __future__ import annotations

import pytest

from enhancements import services
from enhancements.models import Enhancement
from enhancements.redaction import redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mail dana.whitfield@example.com now", "Mail [EMAIL] now"),
        ("Call +44 20 7946 0958 or (555) 123-4567", "Call [PHONE] or [PHONE]"),
        ("password: hunter2 ok", "password: [REDACTED] ok"),
        ("my password is Winter2024!", "my password is [REDACTED]"),
        ('api_key = "abc def"', "api_key = [REDACTED]"),
        ("token=abc123def", "token=[REDACTED]"),
        ("PIN: 1234", "PIN: [REDACTED]"),
        ("authtoken: 8F1C2D3E-4A5B-6C7D-8E9F-0A1B2C3D4E5F", "authtoken: [REDACTED]"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", "Authorization: Bearer [REDACTED]"),
        (
            "Authorization: Zoho-oauthtoken 1000.abcdef1234567890abcdef.1234567890abcdef",
            "Authorization: Zoho-oauthtoken [REDACTED]",
        ),
        ("key sk-proj-abcdefghijklmnop1234", "key [REDACTED KEY]"),
        ("AKIAIOSFODNN7EXAMPLE", "[REDACTED KEY]"),
        ("ghp_abcdefghijklmnopqrstuvwxyz0123", "[REDACTED KEY]"),
        ("xoxb-123456789012-abcdef", "[REDACTED KEY]"),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----", "[REDACTED KEY]"),
        ("hash 0123456789abcdef0123456789abcdef", "hash [REDACTED KEY]"),
        ("whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=", "[REDACTED KEY]"),
    ],
)
def test_personal_data_and_secrets_are_redacted(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Server 10.20.30.40 and fe80::1 are down",
        "Since 2026-11-26 09:30",
        "Python 3.12.1 and Outlook 16.0.17928.20114",
        "Same as tickets 104321 104322 104323",
        "Host lt-0457.corp.example.com on port 8443",
        "Error 0x80070005 (access denied)",
        "KB5034441 failed to install",
        "The VPN drops every 15 minutes",
    ],
)
def test_technical_facts_are_kept(text):
    assert redact(text) == text


def test_redaction_is_idempotent():
    text = "password: hunter2, mail a@b.example, call +1 415 555 0100, Bearer abcdefghijklmnop"
    once = redact(text)
    assert redact(once) == once


@pytest.mark.django_db
def test_the_prompt_sent_to_the_llm_is_redacted(tenant, post_webhook, openai_fake):
    description = (
        "Outlook asks for a password again. My password is Winter2024! and my phone is +44 20 7946 0958. "
        "Reach me at dana.whitfield@example.com. Server 10.20.30.40 is fine."
    )
    payload = {"request": {"id": "1", "subject": "Outlook prompt", "description": description}}
    enhancement_id = post_webhook("acme", payload, secret=tenant.secret).json()["enhancement_id"]
    assert services.enhancement_process(enhancement_id=enhancement_id) == Enhancement.Status.COMPLETED
    prompt = openai_fake.requests_log[-1].json["messages"][1]["content"]
    for secret in ("Winter2024!", "7946 0958", "dana.whitfield@example.com"):
        assert secret not in prompt
    assert "[REDACTED]" in prompt and "[PHONE]" in prompt and "[EMAIL]" in prompt
    assert "10.20.30.40" in prompt


@pytest.mark.django_db
def test_redaction_can_be_turned_off(tenant, post_webhook, openai_fake, settings):
    settings.LLM_REDACT = False
    payload = {"request": {"id": "1", "subject": "Mail", "description": "Reach me at dana@example.com"}}
    enhancement_id = post_webhook("acme", payload, secret=tenant.secret).json()["enhancement_id"]
    services.enhancement_process(enhancement_id=enhancement_id)
    assert "dana@example.com" in openai_fake.requests_log[-1].json["messages"][1]["content"]
