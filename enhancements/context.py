"""Gather the context of one ticket: similar resolved tickets, assets it mentions, articles."""

from __future__ import annotations

from typing import Any

from enhancements.offline import ARTICLE_MIN_SCORE
from tickets import indexing, search
from tickets.models import Ticket

MAX_SIMILAR = 5
MAX_ARTICLES = 3
_RESOLUTION_CHARS = 1500


def ticket_text(ticket: Ticket) -> str:
    """Return the searchable text of a ticket."""
    return f"{ticket.subject}\n{ticket.description}".strip()


def context_gather(*, ticket: Ticket) -> dict[str, Any]:
    """Return the JSON-serialisable context for the ticket (same tenant only)."""
    text = ticket_text(ticket)
    # The new ticket's language and embedding, computed here in the worker (never in the webhook).
    indexing.ticket_index(ticket=ticket)
    similar = search.ticket_search_similar(
        tenant=ticket.tenant, text=text, limit=MAX_SIMILAR, exclude_sdp_id=ticket.sdp_id
    )
    assets = search.asset_find_mentioned(tenant=ticket.tenant, text=text)
    articles = search.article_find_relevant(tenant=ticket.tenant, text=text, limit=MAX_ARTICLES)
    # Below the calibrated floor an article is left out of the context: neither the LLM nor the note sees it.
    articles = [(article, score) for article, score in articles if score >= ARTICLE_MIN_SCORE]
    return {
        "language": ticket.language,
        "similar_tickets": [
            {
                "sdp_id": t.sdp_id,
                "subject": t.subject,
                "score": score,
                "status": t.status,
                "category": t.category,
                "resolution": t.resolution[:_RESOLUTION_CHARS],
                "resolved_at": t.resolved_at.isoformat() if t.resolved_at else None,
            }
            for t, score in similar
        ],
        "assets": [
            {
                "ip": a.ip,
                "hostname": a.hostname,
                "role": a.role,
                "location": a.location,
                "owner": a.owner,
                "notes": a.notes,
            }
            for a, _ in assets
        ],
        "articles": [
            {"title": a.title, "url": a.url, "score": score, "excerpt": a.body[:600]} for a, score in articles
        ],
    }
