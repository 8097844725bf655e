"""Credentials for a tenant's SDP: the only client factory, and SDP Cloud (Zoho) access-token renewal."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import httpx
from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from tickets.models import Tenant
from tickets.sdp.client import ServiceDeskClient, ServiceDeskError, check_base_url


def servicedesk_client(*, tenant: Tenant, backoff_base: float | None = None) -> ServiceDeskClient:
    """Return an SDP client for the tenant, renewing its SDP Cloud token as needed; raise ServiceDeskError.

    Every caller goes through here (tests/test_layout.py checks it), so no path forgets the renewal.
    """
    options: dict[str, Any] = {} if backoff_base is None else {"backoff_base": backoff_base}
    if not tenant.can_refresh_token:
        return ServiceDeskClient(
            base_url=tenant.sdp_base_url, api_key=tenant.sdp_api_key, auth_type=tenant.sdp_auth_type, **options
        )
    return ServiceDeskClient(
        base_url=tenant.sdp_base_url,
        api_key=tenant_access_token(tenant=tenant),
        auth_type=tenant.sdp_auth_type,
        token_refresher=lambda rejected: tenant_access_token(tenant=tenant, rejected=rejected),
        **options,
    )


# --- SDP Cloud access tokens ------------------------------------------------------------------
TOKEN_REFRESH_MARGIN = timedelta(minutes=2)
_REFRESH_LOCK_SECONDS = 30


def _token_is_fresh(tenant: Tenant) -> bool:
    expires = tenant.sdp_token_expires_at
    return bool(tenant.sdp_api_key and expires and expires > timezone.now() + TOKEN_REFRESH_MARGIN)


def tenant_access_token(*, tenant: Tenant, rejected: str | None = None) -> str:
    """Return a usable SDP Cloud access token for the tenant, renewing it with Zoho when it expires.

    `rejected` is a token SDP just refused: it is renewed even if its expiry says otherwise. Zoho allows
    about ten new access tokens per ten minutes per refresh token, so one worker renews while the others
    wait for its result (a cache lock shared by every process).
    """
    if not tenant.can_refresh_token:
        return tenant.sdp_api_key
    tenant.refresh_from_db(fields=["sdp_api_key", "sdp_token_expires_at"])
    if tenant.sdp_api_key != rejected and _token_is_fresh(tenant):
        return tenant.sdp_api_key
    lock = f"zoho-token-refresh:{tenant.pk}"
    if not cache.add(lock, "1", timeout=_REFRESH_LOCK_SECONDS):
        deadline = time.monotonic() + _REFRESH_LOCK_SECONDS
        while time.monotonic() < deadline:
            time.sleep(0.5)
            tenant.refresh_from_db(fields=["sdp_api_key", "sdp_token_expires_at"])
            if tenant.sdp_api_key != rejected and _token_is_fresh(tenant):
                return tenant.sdp_api_key
        raise ServiceDeskError(
            "Another worker is renewing the SDP Cloud access token; retrying later.", permanent=False
        )
    try:
        token, expires_in = _zoho_refresh(tenant)
    finally:
        cache.delete(lock)
    tenant.sdp_api_key = token
    tenant.sdp_token_expires_at = timezone.now() + timedelta(seconds=expires_in)
    tenant.save(update_fields=["sdp_api_key", "sdp_token_expires_at", "updated_at"])
    return token


def _zoho_refresh(tenant: Tenant) -> tuple[str, int]:
    """Return (access token, seconds valid) from the tenant's Zoho accounts server."""
    accounts = (tenant.zoho_accounts_url or "https://accounts.zoho.com").rstrip("/")
    check_base_url(accounts)
    try:
        # Zoho reads the parameters from the query or the form body; the body keeps secrets out of URLs
        # that proxies log.
        response = httpx.post(
            f"{accounts}/oauth/v2/token",
            data={
                "refresh_token": tenant.zoho_refresh_token,
                "client_id": tenant.zoho_client_id,
                "client_secret": tenant.zoho_client_secret,
                "grant_type": "refresh_token",
            },
            timeout=settings.SDP_TIMEOUT,
            follow_redirects=False,
        )
    except httpx.HTTPError as exc:
        raise ServiceDeskError(
            f"Could not reach Zoho accounts to renew the SDP Cloud token: {exc}", permanent=False
        ) from exc
    if response.status_code == 429 or response.status_code >= 500:
        raise ServiceDeskError(
            f"Zoho accounts could not renew the SDP Cloud token right now (HTTP {response.status_code}).",
            permanent=False,
        )
    try:
        body = response.json()
    except ValueError:
        body = {}
    token = body.get("access_token") if isinstance(body, dict) else None
    if not token:
        reason = body.get("error") if isinstance(body, dict) else None
        raise ServiceDeskError(
            f"Zoho refused to renew the SDP Cloud access token ({reason or f'HTTP {response.status_code}'}); "
            "check the tenant's Zoho refresh token, client id and client secret.",
            permanent=True,
        )
    try:
        expires_in = int(body.get("expires_in") or 3600)
    except (TypeError, ValueError):
        expires_in = 3600
    return str(token), expires_in
