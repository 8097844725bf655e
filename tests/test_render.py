"""The note HTML: every piece of ticket, context or model text is inert, links are http(s) only."""

from __future__ import annotations

import pytest

from enhancements.render import marker, note_has_marker, note_render
from tests.test_hostile import assert_inert, dom
from tickets.models import Tenant
from tickets.sdp.links import ticket_url

ENHANCEMENT_ID = "0b7e8a52-3c1d-4f7e-9a55-2f4c1e9d8a10"
OUTPUT = {
    "summary": "VPN drops.",
    "probable_causes": ["MTU"],
    "suggested_steps": ["Lower the MTU."],
    "related_tickets": ["101"],
    "category_suggestion": "Network",
    "priority_suggestion": "High",
    "confidence": 0.8,
}
NO_RELATED = {**OUTPUT, "related_tickets": []}
CONTEXT = {"similar_tickets": [{"sdp_id": "101", "subject": "VPN drops at home", "score": 0.9}]}


def render(tenant: Tenant | None = None, output: dict | None = None, context: dict | None = None, **kw) -> str:
    """Return a note rendered for an unsaved on-premises tenant unless told otherwise."""
    return note_render(
        tenant=tenant or Tenant(slug="acme", sdp_base_url="https://sdp.example.com"),
        enhancement_id=ENHANCEMENT_ID,
        output=OUTPUT if output is None else output,
        context=CONTEXT if context is None else context,
        provider=kw.pop("provider", "openai"),
        model=kw.pop("model", "gpt-4o-mini"),
        **kw,
    )


def links(note: str) -> list[str]:
    """Return the href of every link in the note."""
    return [dict(e[2])["href"] for e in dom(note) if e[0] == "start" and e[1] == "a"]


def test_a_note_has_every_section_and_the_marker():
    note = render()
    assert_inert(note)
    for heading in ("Ticket Enhancer summary", "Probable causes", "Suggested next steps", "Related tickets"):
        assert f"<b>{heading}</b>" in note
    assert "Category: Network" in note and "Priority: High" in note and "Confidence: 80%" in note
    assert note.endswith(marker(ENHANCEMENT_ID)) and note_has_marker(note, ENHANCEMENT_ID)
    assert links(note) == ["https://sdp.example.com/WorkOrder.do?woMode=viewWO&woID=101"]


def test_model_text_is_escaped_everywhere():
    hostile = "<script>alert(1)</script><img src=x onerror=alert(2)> --> <!--"
    output = {
        "summary": hostile,
        "probable_causes": [hostile],
        "suggested_steps": [hostile, '<a href="javascript:alert(3)">x</a>'],
        "related_tickets": ["101"],
        "category_suggestion": hostile,
        "priority_suggestion": hostile,
        "confidence": 0.5,
    }
    context = {
        "similar_tickets": [{"sdp_id": "101", "subject": hostile, "score": 0.9}],
        "assets": [{"hostname": hostile, "ip": "10.0.0.1", "role": hostile, "owner": hostile}],
        "articles": [{"title": hostile, "url": 'https://kb.example.com/?q=<x>&y="z"'}],
    }
    note = render(output=output, context=context, model=hostile)
    assert_inert(note)
    # A "-->" in model text cannot end a comment early: the only comment is the marker.
    assert [e for e in dom(note) if e[0] == "comment"] == [("comment", f" ticket-enhancer:{ENHANCEMENT_ID} ")]
    assert note.count("<script") == 0 and note.count("&lt;script&gt;") >= 6


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        " JavaScript:alert(1)",
        "java\tscript:alert(1)",
        "\x01javascript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "vbscript:msgbox(1)",
        "//evil.example/phish",
        "/relative/path",
        "file:///etc/passwd",
    ],
)
def test_only_http_links_are_rendered_as_links(url):
    note = render(output=NO_RELATED, context={"articles": [{"title": "Fix the VPN", "url": url}]})
    assert_inert(note)
    assert "Fix the VPN" in note
    assert links(note) == []


def test_http_article_links_are_kept():
    note = render(
        output=NO_RELATED, context={"articles": [{"title": "Fix the VPN", "url": "http://kb.example.com/vpn"}]}
    )
    assert links(note) == ["http://kb.example.com/vpn"]


def test_ticket_links_follow_the_tenant_kind():
    cloud = Tenant(
        slug="c", sdp_base_url="https://sdpondemand.manageengine.com/app/itdesk/", sdp_auth_type="zoho_oauth"
    )
    assert ticket_url(cloud, "7") == "https://sdpondemand.manageengine.com/app/itdesk/ui/requests/7/details"
    assert links(render(tenant=cloud)) == ["https://sdpondemand.manageengine.com/app/itdesk/ui/requests/101/details"]
    # No base URL (a dry-run tenant), or one that is not http(s): the id is shown without a link.
    assert links(render(tenant=Tenant(slug="d"))) == []
    assert links(render(tenant=Tenant(slug="e", sdp_base_url="javascript:alert(1)//"))) == []
    assert "#101" in render(tenant=Tenant(slug="d"))


def test_the_offline_fallback_is_labelled():
    note = render(provider="offline", model="context-v1", fallback_reason="timeout")
    assert "offline / context-v1 (offline fallback: the LLM was unavailable)" in note
