"""Everything that makes a technician note safe: rendering with escaping, nh3 sanitising of edits, the marker.

A note is built here from model and ticket text (every piece escaped, links only http(s)), or reduced here to
the markup SDP shows when a support lead edits it; both end with the hidden marker a retry looks for.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import nh3
from django.utils.html import escape, format_html, format_html_join
from django.utils.safestring import SafeString

from enhancements.extras import lead_paragraphs
from tickets.language import language_name
from tickets.models import Tenant
from tickets.sdp.links import ticket_url

MARKER_PREFIX = "ticket-enhancer:"
NOTE_TAGS = {"a", "b", "strong", "i", "em", "u", "p", "br", "div", "span", "ul", "ol", "li", "pre", "code", "h3", "h4"}
NOTE_ATTRIBUTES = {"a": {"href", "target"}, "p": {"style"}, "span": {"style"}, "div": {"style"}}
NOTE_STYLE_PROPERTIES = {"color", "font-size", "font-weight", "font-style"}
# Said at the top of a note written offline because the tenant's daily AI budget was spent (tickets/ai_budget.py),
# in the tenant's note language (English for a language not listed).
BUDGET_SENTENCE = {
    "en": "AI budget for today reached; this note was written offline.",
    "de": "KI-Budget für heute erreicht; diese Notiz wurde offline erstellt.",
    "fr": "Budget IA du jour atteint ; cette note a été rédigée hors ligne.",
    "es": "Presupuesto de IA de hoy alcanzado; esta nota se redactó sin conexión.",
    "it": "Budget IA di oggi raggiunto; questa nota è stata scritta offline.",
    "nl": "AI-budget voor vandaag bereikt; deze notitie is offline geschreven.",
    "pt": "Orçamento de IA de hoje atingido; esta nota foi escrita offline.",
}


def marker(enhancement_id: str) -> str:
    """Return the hidden marker that identifies a note as this enhancement's."""
    return f"<!-- {MARKER_PREFIX}{enhancement_id} -->"


def note_has_marker(description: str, enhancement_id: str) -> bool:
    """Return whether an SDP note's description carries this enhancement's marker or reference."""
    return str(enhancement_id) in (description or "")


def _safe_href(url: str) -> str:
    """Return url when it is an absolute http(s) URL, else "" (a javascript: or data: link would run in SDP)."""
    return url if urlsplit(url.strip()).scheme.lower() in ("http", "https") else ""


def _list(items: list[str]) -> str:
    if not items:
        return ""
    return format_html("<ul>{}</ul>", format_html_join("", "<li>{}</li>", ((str(i),) for i in items)))


def _ticket_link(tenant: Tenant, sdp_id: str, subject: str) -> str:
    url = _safe_href(ticket_url(tenant, sdp_id))
    label = f"#{sdp_id}"
    link = format_html('<a href="{}" target="_blank">{}</a>', url, label) if url else escape(label)
    return format_html("{} {}", link, subject) if subject else link


def note_render(
    *,
    tenant: Tenant,
    enhancement_id: str,
    output: dict[str, Any],
    context: dict[str, Any],
    provider: str,
    model: str,
    fallback_reason: str = "",
) -> str:
    """Return the note HTML; every piece of ticket or model text is escaped."""
    subjects = {item["sdp_id"]: item.get("subject", "") for item in context.get("similar_tickets", [])}
    related = [str(t) for t in output.get("related_tickets", [])]
    parts = lead_paragraphs(tenant=tenant, context=context, output=output)
    if output.get("budget_reached"):
        sentence = BUDGET_SENTENCE.get((tenant.note_language or "en").lower(), BUDGET_SENTENCE["en"])
        parts.insert(0, format_html("<p><b>{}</b></p>", sentence))
    parts.append(format_html("<p><b>Ticket Enhancer summary</b></p><p>{}</p>", output.get("summary", "")))
    if output.get("probable_causes"):
        parts.append(format_html("<p><b>Probable causes</b></p>{}", _list(output["probable_causes"])))
    if output.get("suggested_steps"):
        parts.append(format_html("<p><b>Suggested next steps</b></p>{}", _list(output["suggested_steps"])))
    if related:
        links = format_html_join(
            "", "<li>{}</li>", ((_ticket_link(tenant, sdp_id, subjects.get(sdp_id, "")),) for sdp_id in related)
        )
        parts.append(format_html("<p><b>Related tickets</b></p><ul>{}</ul>", links))
    assets = context.get("assets", [])
    if assets:
        rows = ((a.get("hostname") or "", a.get("ip") or "", a.get("role") or "", a.get("owner") or "") for a in assets)
        parts.append(
            format_html(
                "<p><b>Assets mentioned</b></p><ul>{}</ul>",
                format_html_join("", "<li>{} {} — {} {}</li>", rows),
            )
        )
    articles = context.get("articles", [])
    if articles:
        items = (
            format_html('<a href="{}" target="_blank">{}</a>', a["url"], a["title"])
            if _safe_href(a.get("url") or "")
            else escape(a["title"])
            for a in articles
        )
        parts.append(format_html("<p><b>Knowledge articles</b></p>{}", _list_html(list(items))))
    hints = []
    if output.get("triage"):
        # Triage's suggestions, from the tenant's own SDP lists; "set" where it wrote the field (when allowed).
        parts.append(_triage_line(output["triage"]))
        output = {k: v for k, v in output.items() if k not in ("category_suggestion", "priority_suggestion")}
    if "language" in context:  # the ticket's detected language, whichever provider wrote the note
        hints.append(format_html("Ticket language: {}", language_name(context["language"] or "")))
    if output.get("category_suggestion"):
        hints.append(format_html("Category: {}", output["category_suggestion"]))
    if output.get("priority_suggestion"):
        hints.append(format_html("Priority: {}", output["priority_suggestion"]))
    if "confidence" in output:
        hints.append(format_html("Confidence: {}%", round(float(output["confidence"]) * 100)))
    if hints:
        parts.append(format_html("<p><i>{}</i></p>", format_html_join(" · ", "{}", ((h,) for h in hints))))
    label = f"{provider} / {model}" if model else provider
    if output.get("budget_reached"):
        label += " (offline: the tenant's AI budget for today was reached)"
    elif output.get("offline_reason"):
        label += f" ({output['offline_reason']})"
    elif fallback_reason:
        label += " (offline fallback: the LLM was unavailable)"
    parts.append(
        format_html(
            '<p style="color:#777;font-size:11px">Generated by Ticket Enhancer · {} · ref {}. '
            "Visible to technicians only; check before acting.</p>",
            label,
            enhancement_id,
        )
    )
    return "<div>" + "".join(str(p) for p in parts) + "</div>" + marker(escape(str(enhancement_id)))


def _list_html(items: list[str]) -> str:
    return format_html("<ul>{}</ul>", format_html_join("", "<li>{}</li>", ((i,) for i in items)))


def _triage_line(items: list[dict[str, Any]]) -> SafeString:
    shown = []
    for item in items:
        if not item.get("value"):
            continue
        confidence = item.get("confidence")
        # Held writes are released when the lead approves, which is when SDP gets the note.
        state = " — being set" if item.get("outcome") in ("pending", "applied", "awaiting_review") else ""
        percent = f" ({round(float(confidence) * 100)}%)" if isinstance(confidence, int | float) else ""
        shown.append(format_html("{}: {}{}{}", item.get("label", item.get("field", "")), item["value"], percent, state))
    if not shown:
        return SafeString("")
    return format_html("<p><b>Suggested routing</b>: {}</p>", format_html_join(" · ", "{}", ((h,) for h in shown)))


def note_sanitise(*, html: str, enhancement_id: str) -> str:
    """Return the note reduced to the markup SDP shows, with this enhancement's marker appended."""
    cleaned = nh3.clean(
        html,
        tags=NOTE_TAGS,
        attributes=NOTE_ATTRIBUTES,
        filter_style_properties=NOTE_STYLE_PROPERTIES,
        clean_content_tags={"script", "style"},
        url_schemes={"http", "https", "mailto"},
        strip_comments=True,
    )
    # The marker comment is how a retry recognises the note in SDP (see enhancement_post).
    return cleaned + marker(str(enhancement_id))
