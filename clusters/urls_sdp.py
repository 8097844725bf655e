"""The technician-facing URL of an SDP request (the scheme enhancements.render uses for its links)."""

from __future__ import annotations

from urllib.parse import urlsplit

from tickets.models import Tenant


def ticket_url(tenant: Tenant, sdp_id: str) -> str:
    """Return the request's URL in the tenant's SDP, or "" without a usable http(s) base URL."""
    base = (tenant.sdp_base_url or "").rstrip("/")
    if not base or urlsplit(base).scheme.lower() not in ("http", "https"):
        return ""
    if tenant.sdp_auth_type == Tenant.AuthType.ZOHO_OAUTH:
        return f"{base}/ui/requests/{sdp_id}/details"
    return f"{base}/WorkOrder.do?woMode=viewWO&woID={sdp_id}"
