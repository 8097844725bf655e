"""The client address of a request, behind a known number of trusted proxies (the ingress)."""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.http import HttpRequest


def client_ip(request: HttpRequest) -> str:
    """Return the address the last trusted proxy saw, or REMOTE_ADDR when no proxy is trusted.

    With TRUSTED_PROXY_HOPS=n the n-th entry from the right of X-Forwarded-For is the client: each proxy
    appends the address it received from, so entries further left are whatever the client chose to send.
    """
    remote = request.META.get("REMOTE_ADDR", "")
    hops = settings.TRUSTED_PROXY_HOPS
    if hops <= 0:
        return remote
    forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
    if len(forwarded) < hops:
        return remote
    candidate = forwarded[-hops]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return remote
