"""Django-Q entry points: they take ids only and call a service."""

from __future__ import annotations

from clusters.services import followup_sweep
from enhancements import runner, services, updates
from enhancements.models import TicketUpdate
from enhancements.ratelimit import counters_expire
from project.logging import log_context
from tickets import indexing
from tickets.history import ticket_fetch_sweep


def process_enhancement(enhancement_id: str) -> str:
    """Run one attempt of the pipeline (in a worker thread inside qcluster); return the status or "submitted"."""
    return runner.submit(str(enhancement_id))


def sweep() -> dict[str, int]:
    """Re-enqueue due, lost or stuck enhancements, cluster follow-ups, update checks and SDP fetches; embed the
    history tickets stored since the last sweep (e.g. by resolved events)."""
    result = services.enhancement_sweep()
    result["followups"] = followup_sweep()
    result["fetches"] = ticket_fetch_sweep()
    result["updates"] = updates.ticket_update_sweep()
    result["embedded"] = indexing.ticket_embed_due()
    counters_expire()
    return result


def process_ticket_update(update_id: str) -> str:
    """Check one request_updated event for new information; return its resulting status."""
    request_id = TicketUpdate.objects.filter(pk=update_id).values_list("request_id", flat=True).first()
    with log_context(request_id=request_id or None):
        return updates.ticket_update_process(update_id=update_id)
