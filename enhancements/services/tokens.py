"""Per-tenant API tokens for the read API: create, authenticate, revoke (only a hash is stored)."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.contrib.auth.models import User
from django.utils import timezone

from enhancements.models import ApiToken
from tickets.models import Tenant

API_TOKEN_PREFIX = "te_"  # noqa: S105 - a label that makes leaked keys recognisable, not a secret


def _token_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_token_create(*, tenant: Tenant, name: str, user: User | None = None) -> tuple[ApiToken, str]:
    """Create an API token for one tenant; return it and its key, which is never retrievable again."""
    key = API_TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        tenant=tenant, name=name, prefix=key[:10], key_hash=_token_hash(key), created_by=user
    )
    return token, key


def api_token_authenticate(*, key: str) -> ApiToken | None:
    """Return the live token with this key, or None."""
    token = ApiToken.objects.select_related("tenant").filter(key_hash=_token_hash(key), revoked_at__isnull=True).first()
    if token is None:
        return None
    now = timezone.now()
    # One write a minute at most, not one per request.
    if token.last_used_at is None or token.last_used_at < now - timedelta(minutes=1):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


def api_token_revoke(*, token_id: int) -> bool:
    """Revoke a token; return whether it was live."""
    return bool(ApiToken.objects.filter(pk=token_id, revoked_at__isnull=True).update(revoked_at=timezone.now()))
