"""Django-Q entry points of the ServiceDesk side: they take ids only and call a service."""

from __future__ import annotations

from tickets import history


def fetch_ticket(ticket_id: int) -> str:
    """Fetch what a resolved ticket lacks from SDP; return fetched, retrying, failed or skipped."""
    return history.ticket_fetch_missing(ticket_id=ticket_id)
