"""Resolved/closed webhook events feed the searchable history; an update replaces the fields and the index."""

from __future__ import annotations

import copy

import pytest

from tests.fakes.fixtures import servicedesk_fixture
from tickets.models import Ticket
from tickets.search import ticket_search_similar

pytestmark = pytest.mark.django_db

RESOLVED = servicedesk_fixture("webhook__request_resolved")
OUTLOOK_QUERY = "Outlook keeps prompting for my password\nSince I changed my password Outlook desktop prompts again."
SCANNER_QUERY = "Scanner does not send to email\nThe MFP scan to email fails with an SMTP relay error."


def _ids(tenant, text: str) -> list[str]:
    return [t.sdp_id for t, _ in ticket_search_similar(tenant=tenant, text=text)]


def test_resolved_event_stores_a_searchable_ticket(tenant, post_webhook):
    assert _ids(tenant.tenant, OUTLOOK_QUERY) == []
    response = post_webhook("acme", RESOLVED, secret=tenant.secret)
    assert response.status_code == 200
    assert response.json() == {"status": "stored", "ticket": "98765"}
    ticket = Ticket.objects.get(tenant=tenant.tenant, sdp_id="98765")
    assert ticket.is_resolved and ticket.status == "Resolved"
    assert ticket.resolution.startswith("Removed stale credentials") and "<p>" not in ticket.resolution
    assert ticket.resolved_at is not None
    assert _ids(tenant.tenant, OUTLOOK_QUERY) == ["98765"]


def test_the_same_event_twice_stores_one_ticket(tenant, post_webhook):
    for _ in range(2):
        assert post_webhook("acme", RESOLVED, secret=tenant.secret).status_code == 200
    assert Ticket.objects.filter(sdp_id="98765").count() == 1
    assert _ids(tenant.tenant, OUTLOOK_QUERY) == ["98765"]


def test_an_update_replaces_fields_and_search_index(tenant, post_webhook):
    post_webhook("acme", RESOLVED, secret=tenant.secret)
    changed = copy.deepcopy(RESOLVED)
    changed["event"] = "request_closed"
    changed["request"].update(
        {
            "subject": "Scan to email fails on the MFP",
            "description": "<p>Scanner cannot send to email, SMTP relay error on the MFP.</p>",
            "status": {"name": "Closed"},
            "resolution": {"content": "<p>Re-added the MFP address to the SMTP relay connector.</p>"},
        }
    )
    response = post_webhook("acme", changed, secret=tenant.secret)
    assert response.status_code == 200
    ticket = Ticket.objects.get(sdp_id="98765")
    assert (ticket.subject, ticket.status) == ("Scan to email fails on the MFP", "Closed")
    assert ticket.resolution == "Re-added the MFP address to the SMTP relay connector."
    # The index follows: the new text is found, the old one no longer matches.
    assert _ids(tenant.tenant, SCANNER_QUERY) == ["98765"]
    assert _ids(tenant.tenant, OUTLOOK_QUERY) == []


def test_an_open_ticket_joins_the_history_when_resolved(tenant, post_webhook):
    created = servicedesk_fixture("webhook__request_created")
    created["request"].update(copy.deepcopy(RESOLVED["request"]))
    created["request"]["status"] = {"name": "Open"}
    created["request"].pop("resolution")
    assert post_webhook("acme", created, secret=tenant.secret).status_code == 202
    assert not Ticket.objects.get(sdp_id="98765").is_resolved
    assert _ids(tenant.tenant, OUTLOOK_QUERY) == []  # open tickets are not history

    assert post_webhook("acme", RESOLVED, secret=tenant.secret).status_code == 200
    assert Ticket.objects.get(sdp_id="98765").is_resolved
    assert _ids(tenant.tenant, OUTLOOK_QUERY) == ["98765"]
    assert _ids(tenant.tenant, OUTLOOK_QUERY + "\n") == ["98765"]
    assert ticket_search_similar(tenant=tenant.tenant, text=OUTLOOK_QUERY, exclude_sdp_id="98765") == []


def test_another_tenant_never_sees_the_ticket(tenant, make_tenant, post_webhook):
    other = make_tenant("other")
    post_webhook("acme", RESOLVED, secret=tenant.secret)
    assert _ids(other.tenant, OUTLOOK_QUERY) == []
