"""The one webhook signer of the tests: Standard Webhooks headers computed from the spec over the raw bytes.

Computed with hmac here rather than with the `standardwebhooks` package the webhook verifies with, so a
mistake in how we call that package cannot hide in both sides; and over bytes, so a test can sign a body
that is not UTF-8.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid


def sign_webhook(secret: str, body: bytes, *, msg_id: str | None = None, timestamp: float | None = None) -> dict:
    """Return the `webhook-id`, `webhook-timestamp` and `webhook-signature` headers for body."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    stamp = str(int(time.time() if timestamp is None else timestamp))
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": stamp,
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }


def sign_webhook_meta(secret: str, body: bytes, *, msg_id: str | None = None, timestamp: float | None = None) -> dict:
    """Return sign_webhook's headers as Django test-client keyword arguments (`HTTP_WEBHOOK_ID`, ...)."""
    headers = sign_webhook(secret, body, msg_id=msg_id, timestamp=timestamp)
    return {"HTTP_" + name.upper().replace("-", "_"): value for name, value in headers.items()}
