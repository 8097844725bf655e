"""A bare view that verifies a Standard Webhooks signature and commits one row: the floor of the real webhook."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

TABLE = "bench_floor_delivery"
_SECRET = os.environ.get("BENCH_WEBHOOK_SECRET", "")
_KEY = base64.b64decode(_SECRET.removeprefix("whsec_")) if _SECRET else b""


@csrf_exempt
def floor_webhook(request: HttpRequest, tenant_slug: str) -> JsonResponse:
    """Verify the HMAC over the raw body, insert one row (autocommit: one commit) and answer 202."""
    body = request.body
    msg_id = request.headers.get("webhook-id", "")
    timestamp = request.headers.get("webhook-timestamp", "0")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > 300:
        return JsonResponse({"error": "invalid_signature"}, status=401)
    digest = hmac.new(_KEY, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    expected = base64.b64encode(digest)
    supplied = [part.split(",", 1)[-1].encode() for part in request.headers.get("webhook-signature", "").split()]
    if not any(hmac.compare_digest(expected, candidate) for candidate in supplied):
        return JsonResponse({"error": "invalid_signature"}, status=401)
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {TABLE} (webhook_id, body) VALUES (%s, %s)", [msg_id, body.decode()])  # noqa: S608 - a constant table name
    return JsonResponse({"status": "queued"}, status=202)
