"""The cluster line a clustered ticket's note starts with."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.utils.html import escape, format_html, format_html_join
from django.utils.safestring import SafeString

from tickets.models import Tenant
from tickets.sdp.links import ticket_url


def ticket_link_html(tenant: Tenant, sdp_id: str) -> SafeString:
    """Return "#id" as escaped HTML, linked to the request in the tenant's SDP when the URL is http(s)."""
    url = ticket_url(tenant, sdp_id)
    if urlsplit(url).scheme.lower() not in ("http", "https"):
        url = ""
    label = f"#{sdp_id}"
    return format_html('<a href="{}" target="_blank">{}</a>', url, label) if url else escape(label)


def mention_text(mention: dict[str, Any]) -> str:
    """Return the cluster sentence as plain text (for logs, the admin and tests)."""
    ids = ", ".join(f"#{o['sdp_id']}" for o in mention["others"])
    return _sentence(mention, ids)


def _sentence(mention: dict[str, Any], listed: str) -> str:
    total = int(mention["total_others"])
    more = f" and {total - len(mention['others'])} more" if total > len(mention["others"]) else ""
    span = "in the last" if mention.get("latest", True) else "within"
    noun, verb = ("ticket", "looks") if total == 1 else ("tickets", "look")
    return (
        f"{total} other {noun} {span} {mention['minutes']} minutes {verb} like the same problem: {listed}{more}. "
        "Probably one outage."
    )


def mention_html(tenant: Tenant, mention: dict[str, Any], *, paragraph: bool = True) -> str:
    """Return the cluster paragraph of a note; ticket subjects and ids are escaped."""
    listed = str(
        format_html_join(", ", "{}", ((ticket_link_html(tenant, str(o["sdp_id"])),) for o in mention["others"]))
    )
    # The sentence's own words are ours; only the links carry ticket data, already escaped.
    text = escape(_sentence(mention, "\x00")).replace("\x00", listed)
    line = f'<span style="color:#b71c1c"><b>Probable outage:</b> {text}</span>'
    return f"<p>{line}</p>" if paragraph else line
