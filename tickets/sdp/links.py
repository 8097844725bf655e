"""Links into a tenant's SDP: the URL scheme of a request's page for technicians."""

from __future__ import annotations

from tickets.models import Tenant


def ticket_url(tenant: Tenant, sdp_id: str) -> str:
    """Return the technician-facing URL of a request in the tenant's SDP, or "" without a base URL."""
    base = (tenant.sdp_base_url or "").rstrip("/")
    if not base:
        return ""
    if tenant.sdp_auth_type == Tenant.AuthType.ZOHO_OAUTH:
        return f"{base}/ui/requests/{sdp_id}/details"
    return f"{base}/WorkOrder.do?woMode=viewWO&woID={sdp_id}"
