"""The pipeline's side of outage clusters (and, later, urgency): what goes into the context and the note's top."""

from __future__ import annotations

import logging
from typing import Any

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


def lead_paragraphs(*, tenant: Tenant, context: dict[str, Any], output: dict[str, Any]) -> list[SafeString]:
    """Return the paragraphs a note starts with: the outage cluster line first."""
    parts: list[SafeString] = []
    if context.get("cluster"):
        parts.append(mark_safe(mention_html(tenant, context["cluster"])))  # noqa: S308 - built escaped
    return parts
