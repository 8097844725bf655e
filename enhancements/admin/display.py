"""HTML for the enhancement admin pages: every value escaped by format_html, links only to http(s)."""

from __future__ import annotations

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html, format_html_join, linebreaks
from django.utils.safestring import SafeString, mark_safe

from enhancements.models import Enhancement
from enhancements.render import note_sanitise
from tickets.language import language_name
from tickets.sdp.links import ticket_url

S = Enhancement.Status
BADGE_COLOURS: dict[str, str] = {
    S.QUEUED: "#607d8b",
    S.RUNNING: "#0277bd",
    S.AWAITING_REVIEW: "#e65100",
    S.POSTED: "#2e7d32",
    S.COMPLETED: "#1565c0",
    S.FAILED: "#c62828",
    S.REJECTED: "#6d4c41",
}


def _table(title: str, headers: tuple[str, ...], rows: list[tuple]) -> SafeString:
    """Return a titled context table: escaped headers and cells, one row per tuple."""
    head = format_html_join("", "<th>{}</th>", ((h,) for h in headers))
    body = format_html_join("", "<tr>" + "<td>{}</td>" * len(headers) + "</tr>", rows)
    return format_html("<h4>{}</h4><table class='te-table'><tr>{}</tr>{}</table>", title, head, body)


def status_badge(enhancement: Enhancement) -> SafeString:
    """Return the status as a coloured badge."""
    return format_html(
        '<span class="te-badge" style="background:{};color:#fff;padding:2px 8px;border-radius:10px;'
        'font-size:11px;white-space:nowrap">{}</span>',
        BADGE_COLOURS.get(enhancement.status, "#777"),
        enhancement.get_status_display(),
    )


def ticket_link(enhancement: Enhancement, *, subject_chars: int = 80) -> SafeString:
    """Return the SDP id and subject, linking to the request in the tenant's SDP."""
    ticket = enhancement.ticket
    subject = ticket.subject if len(ticket.subject) <= subject_chars else ticket.subject[: subject_chars - 1] + "…"
    url = ticket_url(enhancement.tenant, ticket.sdp_id)
    if url:
        return format_html(
            '<a href="{}" target="_blank" rel="noopener noreferrer" title="Open in ServiceDesk Plus">#{}</a> {}',
            url,
            ticket.sdp_id,
            subject,
        )
    return format_html("#{} {}", ticket.sdp_id, subject)


def note_preview(enhancement: Enhancement) -> SafeString:
    """Return the sanitised note, rendered."""
    if not enhancement.note_html:
        return mark_safe('<span class="quiet">No note generated yet.</span>')
    cleaned = note_sanitise(html=enhancement.note_html, enhancement_id=str(enhancement.pk))
    # nh3 has removed scripts, event handlers and unknown tags: what is left is what SDP shows.
    return format_html(
        '<div class="te-note" style="border:1px solid #ccc;padding:10px 14px;background:#fff;color:#222;'
        'max-width:900px">{}</div>',
        mark_safe(cleaned),  # noqa: S308 - sanitised by nh3 just above
    )


def ticket_language(code: str) -> str:
    """Return the detected language as a reviewer reads it: "German (de)", or "not detected"."""
    return f"{language_name(code)} ({code})" if code else "not detected"


@admin.display(description="Language", ordering="ticket__language")
def language_column(enhancement: Enhancement) -> str:
    """Return the ticket's detected language (a column of the review list)."""
    return language_name(enhancement.ticket.language) if enhancement.ticket.language else "—"


def ticket_text(enhancement: Enhancement) -> SafeString:
    """Return the ticket's fields and description, escaped."""
    t = enhancement.ticket
    meta = [
        ("Subject", t.subject),
        ("Language", ticket_language(t.language)),
        (
            "Requester",
            " ".join(p for p in (t.requester_name, f"<{t.requester_email}>" if t.requester_email else "") if p),
        ),
        ("Priority", t.priority),
        ("Category", t.category),
        ("Status", t.status),
        ("Technician", t.technician),
    ]
    rows = format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", ((k, v) for k, v in meta if v))
    return format_html(
        '<table class="te-table">{}</table><div class="te-description" style="max-width:900px">{}</div>',
        rows,
        mark_safe(linebreaks(t.description or "(no description)", autoescape=True)),  # noqa: S308 - escaped
    )


def context_display(enhancement: Enhancement) -> SafeString:
    """Return the similar tickets (with scores and links), assets and articles used."""
    context = enhancement.context or {}
    parts = []
    similar = context.get("similar_tickets") or []
    if similar:
        rows = []
        for item in similar:
            sdp_id = str(item.get("sdp_id", ""))
            url = ticket_url(enhancement.tenant, sdp_id)
            link = (
                format_html('<a href="{}" target="_blank" rel="noopener noreferrer">#{}</a>', url, sdp_id)
                if url
                else format_html("#{}", sdp_id)
            )
            score = item.get("score")
            rows.append(
                (
                    link,
                    item.get("subject", ""),
                    f"{score:.3f}" if isinstance(score, int | float) else "—",
                    (item.get("resolution") or "")[:300],
                )
            )
        parts.append(_table("Similar resolved tickets", ("Ticket", "Subject", "Score", "Resolution"), rows))
    assets = context.get("assets") or []
    if assets:
        asset_rows = [
            (
                a.get("hostname") or "",
                a.get("ip") or "",
                a.get("role") or "",
                a.get("location") or "",
                a.get("owner") or "",
            )
            for a in assets
        ]
        parts.append(_table("Assets", ("Hostname", "IP", "Role", "Location", "Owner"), asset_rows))
    articles = context.get("articles") or []
    if articles:
        items = []
        for a in articles:
            score = a.get("score")
            title = (
                format_html(
                    '<a href="{}" target="_blank" rel="noopener noreferrer">{}</a>', a["url"], a.get("title", "")
                )
                if str(a.get("url", "")).startswith(("http://", "https://"))
                else format_html("{}", a.get("title", ""))
            )
            items.append((title, f" (score {score:.3f})" if isinstance(score, int | float) else ""))
        parts.append(
            format_html("<h4>Knowledge articles</h4><ul>{}</ul>", format_html_join("", "<li>{}{}</li>", items))
        )
    if not parts:
        return mark_safe('<span class="quiet">No context was found or gathered.</span>')
    return format_html_join("", "{}", ((p,) for p in parts))


def timings_display(enhancement: Enhancement) -> SafeString | str:
    """Return the milliseconds per stage."""
    timings = enhancement.timings or {}
    if not timings:
        return "—"
    return format_html_join(" · ", "{}: {} ms", ((k, v) for k, v in timings.items()))


def feedback_display(enhancement: Enhancement) -> SafeString | str:
    """Return every rating with its author and comment."""
    rows = [
        (
            f.get_rating_display(),
            str(f.user) if f.user else (f.technician_email or "API"),
            f.comment,
            f.created_at.strftime("%Y-%m-%d %H:%M"),
        )
        for f in enhancement.feedback.select_related("user")
    ]
    if not rows:
        return "Not rated yet."
    return format_html(
        "<table class='te-table'>{}</table>",
        format_html_join("", "<tr><td><b>{}</b></td><td>{}</td><td>{}</td><td>{}</td></tr>", rows),
    )


def history_display(enhancement: Enhancement) -> SafeString:
    """Return every enhancement of the same ticket, newest first."""
    others = Enhancement.objects.filter(ticket_id=enhancement.ticket_id).order_by("-created_at")[:20]
    rows = [
        (
            reverse("admin:enhancements_enhancement_change", args=[e.pk]),
            e.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            status_badge(e),
            e.get_trigger_display(),
            " (this one)" if e.pk == enhancement.pk else "",
        )
        for e in others
    ]
    return format_html("<ul>{}</ul>", format_html_join("", '<li><a href="{}">{}</a> {} {}{}</li>', rows))


def budget_explanation(enhancement: Enhancement) -> str:
    """Return whether the tenant's daily AI budget made the note an offline one, and why."""
    if not enhancement.over_budget:
        return "Within the tenant's daily AI budget." if enhancement.provider == "openai" else "—"
    reason = (enhancement.output or {}).get("budget_reached") or "AI budget for today reached."
    return f"{reason} The note was written offline (an operator can lift the budget on the tenant)."
