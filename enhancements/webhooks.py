"""The ServiceDesk Plus webhook: verify, look up the tenant once, store in one transaction, answer."""

from __future__ import annotations

import functools
import hmac
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from django.conf import settings
from django.db import DatabaseError, DataError
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from enhancements import ratelimit, services, signatures, updates
from enhancements.metrics import count_webhook_answers
from enhancements.models import Enhancement
from enhancements.webhook_checks import plainly_valid
from enhancements.webhook_fastpath import StaleTenant
from project.errors import DB_RETRY_AFTER_SECONDS, error_response
from tickets import history
from tickets.models import Tenant, field_max_lengths
from tickets.sdp.schema import WebhookSerializer
from tickets.storable import UnstorableValue, json_loads_checked, storable_json
from tickets.tenant_cache import tenant_cache_forget, tenant_cached, tenant_load_for_webhook

logger = logging.getLogger(__name__)

TOKEN_HEADER = "HTTP_X_SERVICEDESK_TOKEN"  # noqa: S105 - a header name
_JSON_TYPES = ("application/json",)


# --- authentication ---------------------------------------------------------------------------
def _verify(tenant: Tenant, request: HttpRequest, body: bytes) -> str | None:
    """Return the delivery id when the call is authentic, else None."""
    secret = tenant.webhook_secret
    if not secret:
        return None
    if tenant.webhook_auth == Tenant.WebhookAuth.TOKEN:
        supplied = request.META.get(TOKEN_HEADER, "")
        return "" if supplied and hmac.compare_digest(supplied.encode(), secret.encode()) else None
    msg_id = request.headers.get("webhook-id", "")
    authentic = signatures.verify(
        secret=secret,
        msg_id=msg_id,
        timestamp=request.headers.get("webhook-timestamp", ""),
        signatures=request.headers.get("webhook-signature", ""),
        body=body,
    )
    return msg_id if authentic else None


@functools.cache
def _redis() -> redis.Redis:
    """Return this process's Redis client (a connection pool) for the rate limit."""
    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=1)


def _count(key: str, amount: int = 1) -> int:
    """Return the counter at key after adding amount; it expires two minutes after its first use."""
    if settings.REDIS_URL:
        # One round trip (Django's cache.add + incr take three on the hot path).
        pipe = _redis().pipeline(transaction=False)
        pipe.incrby(key, amount)
        pipe.expire(key, 120, nx=True)
        return int(pipe.execute()[0])
    return ratelimit.counter_hit(key=key, ttl_seconds=120)


# Places in a tenant's minute taken from the shared counter at once, by one process: 1 (every call counted in
# Redis) unless the limit is far above what one process could strand unused (LEASE_MAX places a minute, at most
# 1/LEASE_SHARE of the limit): a tenant with a generous limit then costs one Redis round trip per LEASE_MAX calls.
# Every call still has its own place in the minute, so no more than the limit are ever admitted; a place leased
# and not used before the minute ends is lost (at most LEASE_MAX per process and minute).
LEASE_MAX = 64
LEASE_SHARE = 10_000
_leases: dict[int, tuple[int, int, int]] = {}  # tenant pk -> (minute, next place, last place leased)
_leases_lock = threading.Lock()
_refill_lock = threading.Lock()


def _place(tenant_pk: int, limit: int) -> int:
    """Return this call's place in the tenant's current minute (1 = the first call of the minute)."""
    window = int(time.time() // 60)
    size = max(1, min(LEASE_MAX, limit // LEASE_SHARE)) if settings.REDIS_URL else 1
    if size == 1:
        return _count(f"webhook-rate:{tenant_pk}:{window}")
    place = _leased(tenant_pk, window)
    if place is not None:
        return place
    # One refill at a time per process: threads that found the lease used up wait for it, then take from the
    # new lease instead of each leasing (and all but one stranding) a range of their own.
    with _refill_lock:
        place = _leased(tenant_pk, window)
        if place is not None:
            return place
        top = _count(f"webhook-rate:{tenant_pk}:{window}", size)
        with _leases_lock:
            _leases[tenant_pk] = (window, top - size + 2, top)
    return top - size + 1


def _leased(tenant_pk: int, window: int) -> int | None:
    """Take the next place of the process's lease for this tenant and minute, if one is left."""
    with _leases_lock:
        minute, place, last = _leases.get(tenant_pk, (-1, 0, -1))
        if minute == window and place <= last:
            _leases[tenant_pk] = (minute, place + 1, last)
            return place
    return None


def _rate_limited(tenant: Tenant, counts: dict[int, int]) -> int | None:
    """Return seconds to wait when the tenant is over its per-minute limit, else None. A call is counted once per
    tenant row, even when it is answered a second time with the tenant read again (counts holds them)."""
    limit = tenant.rate_limit_per_minute
    if not limit:
        return None
    if tenant.pk in counts:
        count = counts[tenant.pk]
    else:
        try:
            count = counts[tenant.pk] = _place(tenant.pk, limit)
        except Exception:
            # Rate limiting is protection, not the truth: without the cache the webhook still works.
            logger.warning("rate-limit cache unavailable; request allowed", exc_info=True)
            return None
    if count > limit:
        return 60 - int(time.time() % 60)
    return None


# --- events -----------------------------------------------------------------------------------
def _request_created(
    tenant: Tenant,
    data: dict[str, Any],
    delivery_id: str,
    request: HttpRequest,
    guard: dict[str, Any] | None = None,
) -> JsonResponse:
    outcome = services.enhancement_create_from_webhook(
        tenant=tenant,
        request=data["request"],
        delivery_id=delivery_id or None,
        request_id=getattr(request, "request_id", ""),
        tenant_guard=guard,
    )
    if outcome.duplicate:
        return JsonResponse({"status": "duplicate", "enhancement_id": outcome.enhancement_id}, status=200)
    # DEBUG, not INFO: with the JSON formatter this line was 5-8 % of the webhook's instructions and about 100 of its
    # 700 us in one process (docs/benchmarks.md, "Counted, not timed"), and it told little the access log and the
    # worker do not: the access log has one line per answer with its X-Request-ID, the enhancement stores that
    # request id, and the worker logs it with the enhancement id on every line.
    logger.debug("webhook queued enhancement %s for request %s", outcome.enhancement_id, data["request"]["id"])
    return JsonResponse({"status": "queued", "enhancement_id": outcome.enhancement_id}, status=202)


def _request_resolved(tenant: Tenant, data: dict[str, Any], delivery_id: str, request: HttpRequest) -> JsonResponse:
    try:
        ticket = history.ticket_store_resolved(tenant=tenant, request=data["request"])
    except history.IncompleteHistoryError as exc:
        fields = {
            "request": {
                name: ["Required when the tenant has no SDP credentials."] for name in ("subject", "description")
            }
        }
        return error_response("invalid_payload", str(exc), status=400, fields=fields)
    return JsonResponse({"status": "stored", "ticket": ticket.sdp_id}, status=200)


def _request_updated(tenant: Tenant, data: dict[str, Any], delivery_id: str, request: HttpRequest) -> JsonResponse:
    outcome = updates.ticket_update_receive(
        tenant=tenant,
        request=data["request"],
        delivery_id=delivery_id or None,
        request_id=getattr(request, "request_id", ""),
    )
    if outcome.ignored:
        return JsonResponse({"status": "ignored", "detail": outcome.ignored}, status=200)
    if outcome.duplicate:
        return JsonResponse({"status": "duplicate", "update_id": outcome.update_id}, status=200)
    return JsonResponse({"status": "queued", "update_id": outcome.update_id}, status=202)


EVENT_HANDLERS: dict[str, Callable[[Tenant, dict[str, Any], str, HttpRequest], JsonResponse]] = {
    "request_created": _request_created,
    "request_resolved": _request_resolved,
    "request_closed": _request_resolved,
    "request_updated": _request_updated,
}


MAX_DELIVERY_ID = field_max_lengths(Enhancement)["delivery_id"]


# Control characters cannot be stored in PostgreSQL text (NUL) and have no place in an id.
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def _refused(
    guard: dict[str, Any] | None,
    code: str,
    detail: str,
    *,
    status: int,
    fields: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JsonResponse:
    """Return the error answer; raise StaleTenant instead when the tenant came from the cache (only a guarded
    store may answer from it)."""
    if guard is not None:
        raise StaleTenant("answered from the tenant read again")
    return error_response(code, detail, status=status, fields=fields, headers=headers)


def _answer(
    request: HttpRequest,
    body: bytes,
    tenant: Tenant | None,
    counts: dict[int, int],
    guard: dict[str, Any] | None = None,
) -> JsonResponse:
    """Answer an authentic-looking call for tenant; with guard (a cached tenant) only a guarded store answers:
    every other outcome raises StaleTenant before anything is written."""
    if tenant is None or (delivery_id := _verify(tenant, request, body)) is None:
        # The same answer (and metrics label) for an unknown tenant and a bad signature: no enumeration.
        return _refused(
            guard, "invalid_signature", "The webhook signature or token is missing, stale or wrong.", status=401
        )
    request.metrics_tenant = tenant.slug  # type: ignore[attr-defined] # the metrics label, once authentic
    if not tenant.enabled:
        return _refused(guard, "tenant_disabled", "This tenant is disabled.", status=403)
    if _CONTROL.search(delivery_id):
        return _refused(
            guard,
            "invalid_payload",
            "The webhook-id header contains control characters.",
            status=400,
            fields={"webhook-id": ["Use printable characters only."]},
        )
    if len(delivery_id) > MAX_DELIVERY_ID:
        # A longer id could not be stored (PostgreSQL would refuse it: a 503 the sender retries forever).
        return _refused(
            guard,
            "invalid_payload",
            f"The webhook-id header is longer than {MAX_DELIVERY_ID} characters.",
            status=400,
            fields={"webhook-id": [f"Ensure this value has at most {MAX_DELIVERY_ID} characters."]},
        )
    wait = _rate_limited(tenant, counts)
    if wait is not None:
        return _refused(
            guard,
            "rate_limited",
            f"More than {tenant.rate_limit_per_minute} webhooks this minute; retry later.",
            status=429,
            headers={"Retry-After": str(wait)},
        )
    try:
        payload, plainly_storable = json_loads_checked(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return _refused(guard, "invalid_json", "The body is not valid UTF-8 JSON.", status=400)
    if not isinstance(payload, dict):
        return _refused(
            guard,
            "invalid_payload",
            "The body must be a JSON object.",
            status=400,
            fields={"non_field_errors": ["Expected a JSON object."]},
        )
    try:
        if not plainly_storable:
            payload = storable_json(payload)
    except UnstorableValue as exc:
        return _refused(guard, "invalid_payload", str(exc), status=400, fields=exc.fields())
    # Plain checks for a plainly valid body; the serializer for everything else, and for every 400.
    data = plainly_valid(payload)
    if data is None:
        serializer = WebhookSerializer(data=payload)
        if not serializer.is_valid():
            return _refused(
                guard,
                "invalid_payload",
                "The webhook body is missing or has invalid fields.",
                status=400,
                fields=serializer.errors,
            )
        data = dict(serializer.validated_data)
    # Keep the raw request object (unknown keys included) for the record.
    data["request"] = {**payload["request"], "id": data["request"]["id"]}
    if not delivery_id and data.get("delivery_id"):
        delivery_id = str(data["delivery_id"])
    if guard is not None:
        if data["event"] != "request_created":
            raise StaleTenant("only a new ticket is answered from a cached tenant")
        return _request_created(tenant, data, delivery_id, request, guard=guard)
    handler = EVENT_HANDLERS.get(data["event"])
    if handler is None:
        return JsonResponse({"status": "ignored"}, status=200)
    return handler(tenant, data, delivery_id, request)


@csrf_exempt
@count_webhook_answers
def servicedesk_webhook(request: HttpRequest, tenant_slug: str) -> JsonResponse:
    """Answer one SDP webhook call per DESIGN.md's HTTP contract."""
    if request.method != "POST":
        response = error_response("method_not_allowed", "Use POST.", status=405)
        response["Allow"] = "POST"
        return response
    max_bytes = settings.WEBHOOK_MAX_BYTES
    if not request.META.get("CONTENT_LENGTH") and request.META.get("HTTP_TRANSFER_ENCODING"):
        # A chunked body reaches a WSGI application without CONTENT_LENGTH, and Django then reads no body at
        # all: refuse it plainly rather than answer that a signature over an unseen body is wrong.
        return error_response(
            "length_required", "Send the body with a Content-Length header (chunked bodies are not read).", status=411
        )
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > max_bytes:
        return error_response("payload_too_large", f"The body is larger than {max_bytes} bytes.", status=413)
    content_type = (request.content_type or "").lower()
    if content_type not in _JSON_TYPES and not content_type.endswith("+json"):
        return error_response(
            "unsupported_media_type", "Send the body as JSON with Content-Type: application/json.", status=415
        )
    body = request.body
    if len(body) > max_bytes:
        return error_response("payload_too_large", f"The body is larger than {max_bytes} bytes.", status=413)

    counts: dict[int, int] = {}
    try:
        cached = tenant_cached(slug=tenant_slug) if services.webhook_fast_path_available() else None
        if cached is not None:
            try:
                return _answer(request, body, cached.tenant, counts, guard=cached.guard)
            except StaleTenant:
                tenant_cache_forget(slug=tenant_slug)
        snapshot = tenant_load_for_webhook(slug=tenant_slug)
        return _answer(request, body, snapshot.tenant if snapshot else None, counts)
    except DataError:
        # The database refused a value of this body (SQLSTATE class 22: data exception). Retrying the same body
        # cannot succeed, so it is not a 503; storable_json is meant to catch these first. (An IntegrityError
        # that is not a duplicate stays a 503: it can come from a racing delivery that rolled back.)
        logger.exception("the database refused a value of an authenticated webhook")
        return error_response(
            "invalid_payload",
            "The database refused a value in the body; sending the same body again will fail the same way.",
            status=400,
            fields={"non_field_errors": ["A value in the body cannot be stored."]},
        )
    except DatabaseError:
        logger.exception("database unavailable while handling a webhook")
        return error_response(
            "unavailable",
            "The service cannot store the webhook right now; retry later.",
            status=503,
            headers={"Retry-After": str(DB_RETRY_AFTER_SECONDS)},
        )
