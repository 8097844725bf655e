"""Urgency cues: business impact, frustration, a repeated problem, VIP requesters; measured on a labelled set."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from enhancements import tasks
from enhancements.models import Enhancement
from enhancements.urgency import cues_from_rules, priority_with_urgency
from tickets.models import Ticket

pytestmark = pytest.mark.django_db

URGENCY = json.loads((Path(__file__).parent / "data" / "urgency.json").read_text())
KINDS = ("business_impact", "frustration", "repeated", "vip")


def _load(tenant) -> list[tuple[dict, Ticket]]:
    now = timezone.now()
    loaded = []
    for item in URGENCY["tickets"]:
        requester = item["requester"]
        for n, earlier in enumerate(item["history"]):
            Ticket.objects.create(
                tenant=tenant,
                sdp_id=f"{item['id']}-h{n}",
                subject=earlier["subject"],
                description=earlier["description"],
                requester_name=requester["name"],
                requester_email=requester["email"],
                sdp_created_at=now - timedelta(days=earlier["days_ago"]),
            )
        ticket = Ticket.objects.create(
            tenant=tenant,
            sdp_id=item["id"],
            subject=item["subject"],
            description=item["description"],
            requester_name=requester["name"],
            requester_email=requester["email"],
            sdp_created_at=now,
            raw={"id": item["id"], "requester": requester},
        )
        loaded.append((item, ticket))
    return loaded


def measure(tenant) -> dict[str, dict[str, float]]:
    """Return precision and recall per cue of the offline rules on the labelled set."""
    counts = {kind: {"tp": 0, "fp": 0, "fn": 0} for kind in KINDS}
    for item, ticket in _load(tenant):
        found = {cue.kind for cue in cues_from_rules(ticket)}
        expected = set(item["cues"])
        for kind in KINDS:
            counts[kind]["tp"] += kind in found and kind in expected
            counts[kind]["fp"] += kind in found and kind not in expected
            counts[kind]["fn"] += kind in expected and kind not in found
    figures = {}
    for kind, c in counts.items():
        figures[kind] = {
            "precision": c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 0.0,
            "recall": c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 0.0,
            "support": c["tp"] + c["fn"],
        }
    return figures


def test_cues_precision_and_recall_on_the_labelled_set(make_tenant):
    tenant = make_tenant("acme", vip_requesters="\n".join(URGENCY["vip_list"])).tenant
    figures = measure(tenant)
    for kind, f in figures.items():
        print(f"{kind:16} precision {f['precision']:.2f} recall {f['recall']:.2f} (n={f['support']})")
    for kind in KINDS:
        assert figures[kind]["precision"] >= 0.85, (kind, figures[kind])
        assert figures[kind]["recall"] >= 0.8, (kind, figures[kind])


def test_cues_raise_the_priority_suggestion_never_lower_it():
    impact = {"kind": "business_impact"}
    assert priority_with_urgency("Low", [impact]) == ("High", "raised by business impact")
    assert priority_with_urgency("Medium", [impact, {"kind": "vip"}])[0] == "Urgent"
    assert priority_with_urgency("Urgent", [{"kind": "vip"}]) == ("Urgent", "")
    assert priority_with_urgency("High", []) == ("High", "")


def _deliver(post_webhook, result, request):
    response = post_webhook(result.tenant.slug, {"event": "request_created", "request": request}, secret=result.secret)
    assert response.status_code == 202
    pk = response.json()["enhancement_id"]
    tasks.process_enhancement(pk)
    return Enhancement.objects.get(pk=pk)


IMPACT_VIP = {
    "id": "4001",
    "subject": "Nobody can work",
    "description": "<p>The file server is down and nobody can work in finance. I am really frustrated.</p>",
    "priority": {"name": "Low"},
    "requester": {"name": "Dana Whitfield", "email_id": "ceo@acme.example"},
}


def test_badges_lead_the_note_and_the_admin_list_and_raise_the_priority(make_tenant, post_webhook, client):
    from tests.review_helpers import support_lead

    result = make_tenant("acme", vip_requesters="ceo@acme.example")
    Ticket.objects.create(
        tenant=result.tenant,
        sdp_id="3999",
        subject="File server down",
        description="The file server is down, nobody can open the finance share.",
        requester_email="ceo@acme.example",
        sdp_created_at=timezone.now() - timedelta(days=4),
    )
    enhancement = _deliver(post_webhook, result, IMPACT_VIP)
    kinds = [cue["kind"] for cue in enhancement.urgency]
    assert kinds == ["business_impact", "frustration", "repeated", "vip"]
    assert enhancement.output["priority_suggestion"] == "Urgent"
    first_line = enhancement.note_html.split("</p>", 1)[0]
    assert "[Business impact]" in first_line and "[VIP]" in first_line and "[Repeated problem (#3999)]" in first_line
    assert "suggested priority Urgent" in first_line
    assert "nobody can work" in first_line.lower()  # the evidence: the requester's words, as a tooltip

    client.force_login(support_lead())
    listing = client.get("/admin/enhancements/enhancement/").content.decode()
    assert "Frustrated requester" in listing and "Repeated problem (#3999)" in listing


def test_with_an_llm_impact_and_frustration_come_from_its_structured_output(make_tenant, post_webhook, openai_fake):
    result = make_tenant("acme", vip_requesters="ceo@acme.example")
    enhancement = _deliver(post_webhook, result, IMPACT_VIP)
    assert enhancement.provider == "openai"
    request = openai_fake.requests_log[-1]
    schema = request.json["response_format"]["json_schema"]["schema"]
    assert "urgency" in schema["required"] and set(schema["properties"]["urgency"]["required"]) == {
        "business_impact",
        "frustration",
        "evidence",
    }
    # The fake answers false for both: the LLM's reading wins over the rules; the VIP list is ours.
    assert [cue["kind"] for cue in enhancement.urgency] == ["vip"]
    assert enhancement.output["urgency"]["business_impact"] is False


def test_a_quiet_ticket_has_no_cues(tenant, post_webhook):
    request = {"id": "4002", "subject": "Install Visio", "description": "Please install Visio, no rush. Thanks!"}
    enhancement = _deliver(post_webhook, tenant, request)
    assert enhancement.urgency == []
    assert "[Business impact]" not in enhancement.note_html and "[VIP]" not in enhancement.note_html


def test_an_llm_answer_without_the_urgency_part_is_used_and_the_rules_give_the_cues(
    make_tenant, post_webhook, openai_fake
):
    openai_fake.set_response(
        {
            "summary": "The finance file server is down.",
            "probable_causes": ["The file server stopped."],
            "suggested_steps": ["Check the server."],
            "related_tickets": [],
            "category_suggestion": "Server",
            "priority_suggestion": "Medium",
            "confidence": 0.6,
        }
    )
    result = make_tenant("acme")
    enhancement = _deliver(post_webhook, result, {**IMPACT_VIP, "id": "4003"})
    assert enhancement.provider == "openai" and enhancement.error == ""
    assert [cue["kind"] for cue in enhancement.urgency] == ["business_impact", "frustration"]
