"""Redact personal data and secrets from text before it leaves the process for an LLM."""

from __future__ import annotations

import re

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # Private keys and bearer/API tokens first, so later patterns do not split them.
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S), "[REDACTED KEY]"),
    (re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}\b"), "[REDACTED KEY]"),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), "[REDACTED KEY]"),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}\b"), "[REDACTED KEY]"),
    (re.compile(r"\bxox[abpr]-[A-Za-z0-9-]{10,}\b"), "[REDACTED KEY]"),
    # Zoho-oauthtoken is how SDP Cloud credentials look when a technician pastes a failing call into a ticket.
    (re.compile(r"(?i)\b(bearer|basic|zoho-oauthtoken)\s+[A-Za-z0-9._~+/=-]{12,}"), r"\1 [REDACTED]"),
    (
        re.compile(
            r"(?i)\b(password|passwd|pwd|passcode|pin|secret|api[_ -]?key|token|auth[_ -]?token|access[_ -]?key)"
            r"(\s*(?:is|was|=|:)\s*)(?!\[REDACTED)(\"[^\"]*\"|'[^']*'|\S+)"
        ),
        r"\1\2[REDACTED]",
    ),
    (re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"), "[EMAIL]"),
    # Long opaque strings (hex or base64) are treated as secrets.
    (re.compile(r"\b[A-Fa-f0-9]{32,}\b"), "[REDACTED KEY]"),
    (re.compile(r"\b(?=[A-Za-z0-9+/_-]*\d)(?=[A-Za-z0-9+/_-]*[A-Z])[A-Za-z0-9+/_-]{40,}={0,2}"), "[REDACTED KEY]"),
]


# Digits separated by spaces, hyphens or parentheses (not dots: those are IPs and versions).
_PHONE = re.compile(r"(?<![\w.+-])\+?\(?\d[\d\s()-]{6,}\d(?![\w-]|\.\d)")


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _phone(match: re.Match[str]) -> str:
    text = match.group()
    groups = re.findall(r"\d+", text)
    digits = sum(len(g) for g in groups)
    # Dates and lists of ticket numbers look like phone numbers to a pattern; keep them.
    if _DATE.match(text) or sum(len(g) >= 5 for g in groups) > 1 or not 9 <= digits <= 15:
        return text
    return "[PHONE]"


def redact(text: str) -> str:
    """Return text with emails, phone numbers and secret-looking values replaced by placeholders."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return _PHONE.sub(_phone, text)
