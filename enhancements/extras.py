"""What the pipeline adds to a ticket's context beyond search (outage cluster, refresh reason) and the note's top."""

from __future__ import annotations

import logging
from typing import Any

from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from clusters.render import mention_html
from clusters.services import cluster_check
from tickets.models import Tenant, Ticket

logger = logging.getLogger(__name__)


def cluster_context(*, ticket: Ticket, context: dict[str, Any]) -> dict[str, Any]:
    """Return {"cluster": mention} when the ticket belongs to an open outage cluster, else {}."""
    names = [a.get("hostname") or "" for a in context.get("assets", [])]
    try:
        mention = cluster_check(ticket=ticket, asset_names=names)
    except Exception:
        # The cluster line helps; the note matters more. The next attempt or re-run checks again.
        logger.exception("cluster check failed; the note is written without it")
        return {}
    return {"cluster": mention.to_json()} if mention else {}


# Keys an enhancement is created with (by a refresh) that the pipeline keeps when it gathers the context again.
CARRIED_KEYS = ("update", "information")


def pipeline_extras(*, enhancement: Any, ticket: Ticket, context: dict[str, Any]) -> dict[str, Any]:
    """Return what to add to the gathered context: carried refresh details and the outage cluster."""
    extras = {key: enhancement.context[key] for key in CARRIED_KEYS if key in (enhancement.context or {})}
    extras.update(cluster_context(ticket=ticket, context=context))
    return extras


def lead_paragraphs(*, tenant: Tenant, context: dict[str, Any], output: dict[str, Any]) -> list[SafeString]:
    """Return the paragraphs a note starts with: the outage cluster line first."""
    parts: list[SafeString] = []
    if context.get("cluster"):
        parts.append(mark_safe(mention_html(tenant, context["cluster"])))  # noqa: S308 - built escaped
    if context.get("update"):
        update = context["update"]
        parts.append(
            format_html(
                '<p style="color:#0d47a1"><b>Updated:</b> {} This note replaces the earlier one (ref {}).</p>',
                update.get("reason", "The ticket gained information."),
                update.get("previous_enhancement", "–"),
            )
        )
    return parts
