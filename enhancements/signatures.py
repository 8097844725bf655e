"""Standard Webhooks signatures (standardwebhooks.com), verified over the raw body bytes.

The `standardwebhooks` package decodes the body as UTF-8 before signing it, so a correctly signed body that
is not UTF-8 cannot verify, and one malformed entry in a multi-signature header raises instead of being
skipped. The scheme itself is small: HMAC-SHA256(key, "<id>.<timestamp>.<body bytes>"), base64, in a
space-delimited list of `v1,<signature>` entries. Tests sign with the package and check we agree with it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import time

TOLERANCE_SECONDS = 5 * 60


def _header_bytes(value: str) -> bytes:
    # WSGI hands header values over as latin-1 decoded text (PEP 3333): encoding them back gives the bytes sent.
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


def signing_key(secret: str) -> bytes:
    """Return the HMAC key of a `whsec_<base64>` secret (padding optional, as the package allows)."""
    return base64.b64decode(secret.removeprefix("whsec_") + "==")


def verify(*, secret: str, msg_id: str, timestamp: str, signatures: str, body: bytes, now: float | None = None) -> bool:
    """Return whether any v1 signature in the header signs msg_id, timestamp and body with the secret."""
    if not (secret and msg_id and timestamp and signatures):
        return False
    try:
        sent_at = float(timestamp)
        key = signing_key(secret)
    except (ValueError, binascii.Error):
        return False
    if not math.isfinite(sent_at) or abs((time.time() if now is None else now) - sent_at) > TOLERANCE_SECONDS:
        return False
    signed = _header_bytes(msg_id) + b"." + str(math.floor(sent_at)).encode() + b"." + body
    expected = hmac.new(key, signed, hashlib.sha256).digest()
    valid = False
    for entry in signatures.split(" "):
        version, comma, signature = entry.partition(",")
        if version != "v1" or not comma:
            continue
        try:
            candidate = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            continue
        # No early exit: the time taken does not say which entry matched.
        valid |= hmac.compare_digest(expected, candidate)
    return valid
