"""What the pipeline adds beyond search (outage cluster, urgency cues, refresh reason) and a note's first lines."""

from __future__ import annotations

import logging
from typing import Any

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from clusters.render import mention_html
from clusters.services import cluster_check
from enhancements.llm import Generation
from enhancements.urgency import cues_from_rules, cues_with_llm, priority_with_urgency
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
    extras["urgency"] = [cue.to_json() for cue in cues_from_rules(ticket)]
    return extras


def output_extras(*, context: dict[str, Any], generation: Generation) -> dict[str, Any]:
    """Return the generated output with the final urgency cues and the priority suggestion they raise."""
    output = dict(generation.output)
    from_llm = generation.provider == "openai" and not generation.fallback_reason
    cues = cues_with_llm(context.get("urgency", []), output.get("urgency") if from_llm else None)
    output["urgency_cues"] = cues
    raised, why = priority_with_urgency(str(output.get("priority_suggestion") or ""), cues)
    if why:
        output["priority_suggestion"], output["priority_reason"] = raised, why
    return output


def lead_paragraphs(*, tenant: Tenant, context: dict[str, Any], output: dict[str, Any]) -> list[SafeString]:
    """Return the paragraphs a note starts with: the outage cluster line first."""
    parts: list[SafeString] = []
    first: list[SafeString] = [_badge(cue, in_note=True) for cue in output.get("urgency_cues", [])]
    if first and output.get("priority_reason"):
        first.append(format_html("<i>suggested priority {}</i>", output.get("priority_suggestion", "")))
    if context.get("cluster"):
        first.append(mark_safe(mention_html(tenant, context["cluster"], paragraph=False)))  # noqa: S308 - escaped
    if first:
        # One first line: what makes the ticket urgent, then the outage it belongs to.
        parts.append(format_html("<p>{}</p>", format_html_join(" ", "{}", ((part,) for part in first))))
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


BADGE_COLOURS = {"business_impact": "#b71c1c", "frustration": "#e65100", "repeated": "#6a1b9a", "vip": "#1a237e"}


def _badge(cue: dict[str, str], *, in_note: bool = False) -> SafeString:
    label = cue.get("label", cue.get("kind", ""))
    if cue.get("kind") == "repeated" and cue.get("ticket"):
        label = f"{label} (#{cue['ticket']})"
    colour = BADGE_COLOURS.get(cue.get("kind", ""), "#555")
    if in_note:
        # Only the properties the note sanitiser keeps (an edited note is re-sanitised): a pill with a
        # background would turn into white text on white once edited.
        return format_html(
            '<span style="color:{};font-weight:bold;font-size:11px" title="{}">[{}]</span>',
            colour,
            cue.get("evidence", ""),
            label,
        )
    return format_html(
        '<span style="background:{};color:#fff;padding:1px 6px;border-radius:8px;font-size:11px" title="{}">{}</span>',
        colour,
        cue.get("evidence", ""),
        label,
    )


def urgency_badges(cues: list[dict[str, str]]) -> SafeString:
    """Return the cues as badges (the admin list's column)."""
    return format_html_join(" ", "{}", ((_badge(cue),) for cue in cues or []))
