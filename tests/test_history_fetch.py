"""Resolved events that carry only an id: the worker fetches what they lack, and search never shows an empty ticket."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from enhancements.tasks import sweep
from tests.fakes.fixtures import servicedesk_fixture
from tickets.models import Ticket, TicketFetch
from tickets.search import ticket_search_similar
from tickets.services import ticket_upsert
from tickets.tasks import fetch_ticket

pytestmark = pytest.mark.django_db

RESOLVED = servicedesk_fixture("webhook__request_resolved")["request"]
QUERY = "Outlook keeps prompting for my password after the password change"
MINIMAL = {"event": "request_resolved", "request": {"id": RESOLVED["id"]}}


@pytest.fixture
def token_tenant(make_tenant, sdp):
    """Return a token-mode tenant with SDP credentials, as the runbook's token-mode sender has."""
    sdp.add_request(RESOLVED)
    return make_tenant("tok", webhook_auth="token", sdp_base_url=sdp.url, sdp_api_key=sdp.api_key)


def _ids(tenant, text: str = QUERY) -> list[str]:
    return [t.sdp_id for t, _ in ticket_search_similar(tenant=tenant, text=text)]


@pytest.mark.parametrize("event", ["request_resolved", "request_closed"])
def test_a_minimal_resolved_event_is_completed_from_sdp_by_the_worker(
    token_tenant, post_webhook, django_capture_on_commit_callbacks, event
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = post_webhook("tok", {**MINIMAL, "event": event}, token=token_tenant.secret)
    assert response.status_code == 200 and response.json() == {"status": "stored", "ticket": RESOLVED["id"]}
    ticket = Ticket.objects.get(sdp_id=RESOLVED["id"])
    assert TicketFetch.objects.get(ticket=ticket).due_at is not None and callbacks, "due, enqueued after commit"
    # Until the text arrives the ticket is not offered as history.
    assert _ids(token_tenant.tenant) == [] and _ids(token_tenant.tenant, "98765") == []

    assert fetch_ticket(ticket.pk) == "fetched"
    ticket.refresh_from_db()
    assert ticket.subject == RESOLVED["subject"] and "Credential Manager" in ticket.resolution
    assert ticket.description.startswith("User changed password") and ticket.is_resolved
    assert not TicketFetch.objects.exists()
    assert _ids(token_tenant.tenant) == [RESOLVED["id"]]
    assert fetch_ticket(ticket.pk) == "skipped"  # safe to run twice


def test_a_resolved_event_missing_only_the_resolution_fetches_it(token_tenant, post_webhook):
    partial = {k: v for k, v in RESOLVED.items() if k != "resolution"}
    post_webhook("tok", {"event": "request_resolved", "request": partial}, token=token_tenant.secret)
    ticket = Ticket.objects.get(sdp_id=RESOLVED["id"])
    assert TicketFetch.objects.filter(ticket=ticket).exists()
    assert fetch_ticket(ticket.pk) == "fetched"
    ticket.refresh_from_db()
    assert "Credential Manager" in ticket.resolution


def test_a_complete_resolved_event_fetches_nothing(token_tenant, post_webhook):
    post_webhook("tok", {"event": "request_resolved", "request": RESOLVED}, token=token_tenant.secret)
    assert not TicketFetch.objects.exists()


def test_a_minimal_resolved_event_keeps_what_the_created_event_stored(token_tenant, post_webhook, sdp):
    created = {"request": {k: v for k, v in RESOLVED.items() if k not in ("resolution", "status")}}
    assert post_webhook("tok", created, token=token_tenant.secret).status_code == 202
    assert post_webhook("tok", MINIMAL, token=token_tenant.secret).status_code == 200
    ticket = Ticket.objects.get(sdp_id=RESOLVED["id"])
    assert ticket.subject == RESOLVED["subject"] and ticket.is_resolved
    assert ticket.raw["subject"] == RESOLVED["subject"], "the raw record of the created event is kept"


def test_a_transient_sdp_failure_is_retried_later_and_the_sweep_picks_it_up(token_tenant, post_webhook, sdp):
    post_webhook("tok", MINIMAL, token=token_tenant.secret)
    ticket = Ticket.objects.get(sdp_id=RESOLVED["id"])
    for _ in range(3):  # the client's own retries included
        sdp.fail_next(status=503)
    assert fetch_ticket(ticket.pk) == "retrying"
    fetch = TicketFetch.objects.get(ticket=ticket)
    assert fetch.due_at > timezone.now() - timedelta(seconds=1) and fetch.attempts == 1
    assert "HTTP 503" in fetch.error
    TicketFetch.objects.filter(pk=ticket.pk).update(due_at=timezone.now() - timedelta(minutes=5))
    assert sweep()["fetches"] == 1
    assert fetch_ticket(ticket.pk) == "fetched"
    ticket.refresh_from_db()
    assert ticket.subject == RESOLVED["subject"] and not TicketFetch.objects.exists()


def test_a_permanent_sdp_failure_stops_and_says_why(make_tenant, post_webhook, sdp):
    result = make_tenant("tok", webhook_auth="token", sdp_base_url=sdp.url, sdp_api_key=sdp.api_key)
    post_webhook("tok", {"event": "request_resolved", "request": {"id": "404404"}}, token=result.secret)
    ticket = Ticket.objects.get(sdp_id="404404")
    assert fetch_ticket(ticket.pk) == "failed"
    fetch = TicketFetch.objects.get(ticket=ticket)
    assert fetch.due_at is None and "HTTP 404" in fetch.error and fetch.attempts == 1
    assert fetch_ticket(ticket.pk) == "skipped"
    assert _ids(result.tenant, "404404") == []


def test_the_admin_says_why_a_fetch_stopped(make_tenant, post_webhook, sdp, client, admin_user):
    result = make_tenant("tok", webhook_auth="token", sdp_base_url=sdp.url, sdp_api_key=sdp.api_key)
    post_webhook("tok", {"event": "request_resolved", "request": {"id": "404404"}}, token=result.secret)
    ticket = Ticket.objects.get(sdp_id="404404")
    fetch_ticket(ticket.pk)
    client.force_login(admin_user)
    page = client.get(f"/admin/tickets/ticket/{ticket.pk}/change/").content.decode()
    assert "Gave up after 1 attempt(s)" in page and "HTTP 404" in page


def test_a_minimal_resolved_event_without_sdp_credentials_is_refused_not_stored_empty(make_tenant, post_webhook):
    result = make_tenant("tok", webhook_auth="token")
    response = post_webhook("tok", MINIMAL, token=result.secret)
    assert response.status_code == 400 and response.json()["error"] == "invalid_payload"
    assert "subject" in response.json()["detail"] and "SDP" in response.json()["detail"]
    assert not Ticket.objects.exists()


def test_a_minimal_resolved_event_for_a_known_ticket_without_credentials_is_stored(make_tenant, post_webhook):
    result = make_tenant("tok", webhook_auth="token")
    created = {"request": {k: v for k, v in RESOLVED.items() if k not in ("resolution", "status")}}
    post_webhook("tok", created, token=result.secret)
    assert post_webhook("tok", MINIMAL, token=result.secret).status_code == 200
    ticket = Ticket.objects.get(sdp_id=RESOLVED["id"])
    assert ticket.is_resolved and ticket.subject and not TicketFetch.objects.exists()


def test_search_never_returns_a_ticket_without_text(tenant):
    # Imports and older rows can hold resolved tickets with no subject and no description.
    ticket_upsert(
        tenant=tenant.tenant,
        sdp_id="1",
        fields={"is_resolved": True, "status": "Resolved", "resolution": "Outlook password prompts fixed"},
        source="import",
    )
    ticket_upsert(
        tenant=tenant.tenant,
        sdp_id="2",
        fields={"is_resolved": True, "subject": "Outlook password prompts", "resolution": "Fixed the profile"},
        source="import",
    )
    assert _ids(tenant.tenant, "Outlook password prompts") == ["2"]
