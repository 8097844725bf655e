"""A per-process cache of tenants for the webhook's hot path, exact because the store re-checks every use.

A cached tenant never answers a webhook by itself. The webhook verifies the signature with it and then stores
the delivery with one statement that inserts only while the tenant's row still has the cached id, slug, auth
mode, secret (compared as its stored ciphertext: a re-encrypted or rotated secret differs), rate limit, and is
enabled (enhancements/webhook_fastpath.py). Every other outcome (the row changed, a 401, 403, 429 or 400, a
duplicate, another event) forgets the entry, looks the tenant up again and answers from that. So a disabled tenant
or a rotated secret stops working at once, in every process, without an invalidation message; the time to live
only bounds the memory and how long a stale entry costs one wasted statement. The services that change a tenant
forget it in their own process as well (tenant_cache_forget), so the next webhook does not pay that statement.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from django.db.models import TextField
from django.db.models.functions import Cast

from tickets.models import Tenant

TTL_SECONDS = 30.0
# The columns the webhook's answer depends on; the store re-reads them in its statement.
GUARDED = ("id", "slug", "enabled", "webhook_auth", "webhook_secret", "rate_limit_per_minute")


@dataclass(frozen=True)
class TenantSnapshot:
    """A tenant as loaded, with the stored values of its guarded columns (column name -> value)."""

    tenant: Tenant
    guard: dict[str, Any]
    loaded_at: float


_cache: dict[str, TenantSnapshot] = {}


def tenant_load_for_webhook(*, slug: str) -> TenantSnapshot | None:
    """Return the tenant with its guard from one SELECT (None when no tenant has the slug); cache it if enabled."""
    # Cast to a plain text field: the value as stored (the ciphertext), not decrypted by the model field.
    stored_secret = Cast("webhook_secret", output_field=TextField())
    tenant = Tenant.objects.filter(slug=slug).annotate(stored_secret=stored_secret).first()
    if tenant is None:
        _cache.pop(slug, None)
        return None
    values = {
        "id": tenant.pk,
        "slug": tenant.slug,
        "enabled": tenant.enabled,
        "webhook_auth": tenant.webhook_auth,
        "webhook_secret": tenant.stored_secret,  # the annotation above
        "rate_limit_per_minute": tenant.rate_limit_per_minute,
    }
    guard = {name: values[name] for name in GUARDED}  # plain fields: each column is named like its field
    snapshot = TenantSnapshot(tenant=tenant, guard=guard, loaded_at=time.monotonic())
    if tenant.enabled:
        _cache[slug] = snapshot
    else:
        _cache.pop(slug, None)
    return snapshot


def tenant_cached(*, slug: str) -> TenantSnapshot | None:
    """Return the cached snapshot of the tenant with this slug, if loaded less than TTL_SECONDS ago."""
    snapshot = _cache.get(slug)
    if snapshot is None or time.monotonic() - snapshot.loaded_at > TTL_SECONDS:
        return None
    return snapshot


def tenant_cache_forget(*, slug: str | None = None) -> None:
    """Drop the cached tenant with this slug (every tenant without one)."""
    if slug is None:
        _cache.clear()
    else:
        _cache.pop(slug, None)
