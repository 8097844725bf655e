"""Tickets that change: request_updated refreshes a ticket that gained information, once per interval, no loops."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import httpx
import pytest
from django.utils import timezone

from enhancements import tasks
from enhancements.models import Enhancement, TicketUpdate
from tests.fakes.fixtures import servicedesk_fixture
from tests.signing import sign_webhook
from tickets.models import Ticket

CREATED = servicedesk_fixture("webhook__request_created")
SDP_ID = CREATED["request"]["id"]
REPLY = "<p>Here is the exact error: 0x800CCC0E when Outlook connects to outlook.office365.com over port 993.</p>"


def _updated(sdp_id: str = SDP_ID, **fields) -> dict:
    return {"event": "request_updated", "request": {"id": sdp_id, **fields}}


def _process_updates() -> list[str]:
    return [
        tasks.process_ticket_update(str(pk))
        for pk in TicketUpdate.objects.filter(status="pending").values_list("pk", flat=True)
    ]


def _process_enhancements() -> list[str]:
    return [
        tasks.process_enhancement(str(pk))
        for pk in Enhancement.objects.filter(status="queued").values_list("pk", flat=True)
    ]


@pytest.fixture
def sdp_tenant(make_tenant, sdp):
    sdp.add_request(CREATED["request"])
    return make_tenant("acme", sdp_base_url=sdp.url, sdp_api_key=sdp.api_key)


@pytest.fixture
def enhanced(sdp_tenant, sdp, post_webhook, db):
    response = post_webhook("acme", CREATED, secret=sdp_tenant.secret)
    assert response.status_code == 202
    assert _process_enhancements() == ["posted"]
    assert len(sdp.notes[SDP_ID]) == 1
    return sdp_tenant


pytestmark = pytest.mark.django_db


def test_an_edit_without_new_information_changes_nothing(enhanced, sdp, post_webhook):
    # SDP's trigger fires for the status change our own triage (or a technician) made.
    response = post_webhook("acme", servicedesk_fixture("webhook__request_updated"), secret=enhanced.secret)
    assert response.status_code == 202 and response.json()["status"] == "queued"
    assert _process_updates() == ["unchanged"]
    assert Enhancement.objects.count() == 1 and len(sdp.notes[SDP_ID]) == 1


def test_a_requester_reply_refreshes_the_enhancement_and_keeps_history(enhanced, sdp, post_webhook):
    first = Enhancement.objects.get()
    sdp.add_conversation(SDP_ID, REPLY, sender=CREATED["request"]["requester"]["email_id"])
    assert post_webhook("acme", _updated(), secret=enhanced.secret).status_code == 202
    assert _process_updates() == ["refreshed"]
    refreshed = Enhancement.objects.exclude(pk=first.pk).get()
    assert refreshed.trigger == "update" and refreshed.context["update"]["previous_enhancement"] == str(first.pk)
    assert _process_enhancements() == ["posted"]
    notes = sdp.notes[SDP_ID]
    assert len(notes) == 2
    assert "<b>Updated:</b> The requester replied (1 new reply)." in notes[1]["description"]
    assert "0x800CCC0E" in Ticket.objects.get(sdp_id=SDP_ID).description
    first.refresh_from_db()
    assert first.status == "posted"  # the earlier one is kept

    # The echo of our own "updated" note: nothing new, nothing posted.
    assert post_webhook("acme", _updated(), secret=enhanced.secret).status_code == 202
    assert _process_updates() == ["unchanged"]
    assert len(sdp.notes[SDP_ID]) == 2


def test_small_changes_are_not_substance(enhanced, sdp, post_webhook):
    sdp.add_conversation(SDP_ID, "<p>Thanks!</p>", sender=CREATED["request"]["requester"]["email_id"])
    sdp.requests[SDP_ID]["description"] = sdp.requests[SDP_ID]["description"].replace(" ", "  ") + " "
    post_webhook("acme", _updated(), secret=enhanced.secret)
    assert _process_updates() == ["unchanged"]
    # A technician's reply is not the requester's information.
    sdp.add_conversation(SDP_ID, REPLY, sender="tech@msp.example", name="Tech")
    post_webhook("acme", _updated(), secret=enhanced.secret)
    assert _process_updates() == ["unchanged"]
    assert Enhancement.objects.count() == 1


def test_new_description_text_refreshes_at_most_once_per_interval(enhanced, sdp, post_webhook):
    sdp.requests[SDP_ID]["description"] += (
        "<p>Update: it also fails on the second laptop LT-0458, error 0x8004010F.</p>"
    )
    post_webhook("acme", _updated(), secret=enhanced.secret)
    assert _process_updates() == ["refreshed"]
    _process_enhancements()
    # More information within the interval (15 minutes by default) waits; it is not lost.
    sdp.add_conversation(SDP_ID, REPLY, sender=CREATED["request"]["requester"]["email_id"])
    post_webhook("acme", _updated(), secret=enhanced.secret)
    assert _process_updates() == ["pending"]
    deferred = TicketUpdate.objects.get(status="pending")
    assert deferred.next_attempt_at > timezone.now() + timedelta(minutes=14)
    assert Enhancement.objects.count() == 2
    # When the interval has passed, the sweep queues the check again and it refreshes once.
    Enhancement.objects.filter(trigger="update").update(created_at=timezone.now() - timedelta(minutes=16))
    TicketUpdate.objects.filter(pk=deferred.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    assert tasks.sweep()["updates"] == 1
    assert _process_updates() == ["refreshed"]
    assert _process_enhancements() == ["posted"]
    assert len(sdp.notes[SDP_ID]) == 3


def test_duplicates_markers_closed_and_unknown_tickets(enhanced, sdp, post_webhook):
    body = _updated()
    first = post_webhook("acme", body, secret=enhanced.secret, msg_id="msg_same")
    again = post_webhook("acme", body, secret=enhanced.secret, msg_id="msg_same")
    assert again.status_code == 200 and again.json() == {"status": "duplicate", "update_id": first.json()["update_id"]}
    ours = _updated(description=sdp.notes[SDP_ID][0]["description"])
    answer = post_webhook("acme", ours, secret=enhanced.secret)
    assert answer.status_code == 200 and answer.json()["status"] == "ignored"
    post_webhook("acme", _updated("999999"), secret=enhanced.secret)
    sdp.requests[SDP_ID]["status"] = {"name": "Closed"}
    sdp.add_conversation(SDP_ID, REPLY, sender=CREATED["request"]["requester"]["email_id"])
    outcomes = sorted(_process_updates())
    assert outcomes in (["ignored", "ignored"], ["ignored", "unchanged"]), outcomes
    reasons = set(TicketUpdate.objects.values_list("reason", flat=True))
    assert any("Unknown ticket" in r for r in reasons) and Enhancement.objects.count() == 1


def test_dry_run_tenant_refreshes_from_the_event_body(tenant, post_webhook):
    post_webhook(
        "acme",
        {"event": "request_created", "request": {"id": "55", "subject": "VPN fails", "description": "VPN fails."}},
        secret=tenant.secret,
    )
    _process_enhancements()
    text = "VPN fails. Now the client shows error 809 and the gateway vpn-gw01 times out from every site."
    post_webhook("acme", _updated("55", description=f"<p>{text}</p>"), secret=tenant.secret)
    assert _process_updates() == ["refreshed"]
    assert _process_enhancements() == ["completed"]
    latest = Enhancement.objects.filter(trigger="update").get()
    assert "Updated:" in latest.note_html and "error 809" in Ticket.objects.get(sdp_id="55").description


def test_refreshing_can_be_turned_off_per_tenant(make_tenant, post_webhook):
    off = make_tenant("off", refresh_interval_minutes=0)
    post_webhook(
        "off", {"event": "request_created", "request": {"id": "56", "subject": "VPN fails"}}, secret=off.secret
    )
    _process_enhancements()
    post_webhook(
        "off", _updated("56", description="A long new description with many new words in it."), secret=off.secret
    )
    assert _process_updates() == ["ignored"]


# --- no loops, with real processes: the SDP fake calls the webhook on every note and edit it receives -------------
@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_our_own_notes_and_field_writes_never_cause_another_enhancement(tmp_path, sdp):
    from tests.processes import running_stack, wait_for
    from tickets.services import tenant_create_or_update

    sdp.add_request(CREATED["request"])
    result = tenant_create_or_update(slug="loop", name="Loop", sdp_base_url=sdp.url, sdp_api_key=sdp.api_key)
    events: list[tuple[str, str, int]] = []

    with running_stack(tmp_path) as stack:

        def deliver(payload: dict) -> int:
            body = json.dumps(payload).encode()
            headers = sign_webhook(result.secret, body)
            status, _, _ = stack.request(
                "POST", "/webhook/servicedesk/loop/", body, {"Content-Type": "application/json", **headers}
            )
            return status

        def on_change(request_id: str, event: str) -> None:
            # What an SDP custom trigger on edit and on a new reply does: call us with the request id.
            events.append((request_id, event, deliver(_updated(request_id, status={"name": "Open"}))))

        sdp.on_change = on_change
        assert deliver(CREATED) == 202

        def settled(notes: int) -> bool:
            busy = (
                TicketUpdate.objects.filter(status__in=TicketUpdate.ACTIVE_STATUSES).exists()
                or Enhancement.objects.filter(status__in=Enhancement.ACTIVE_STATUSES).exists()
            )
            return len(sdp.notes[SDP_ID]) >= notes and not busy and all(e[1] != "note" or e[2] == 202 for e in events)

        wait_for(lambda: settled(1), what="the first enhancement to settle")
        time.sleep(2)  # room for a loop to show itself
        assert len(sdp.notes[SDP_ID]) == 1 and Enhancement.objects.count() == 1
        assert ("104321", "note", 202) in events

        # A field write (what triage does): SDP fires the trigger; nothing is enhanced.
        with httpx.Client(headers=sdp.auth_headers()) as http:
            answer = http.put(
                f"{sdp.url}/api/v3/requests/{SDP_ID}",
                data={"input_data": json.dumps({"request": {"priority": {"name": "High"}}})},
            )
            assert answer.status_code == 200
        wait_for(lambda: settled(1) and any(e[1] == "edit" for e in events), what="the field edit")
        time.sleep(1)
        assert Enhancement.objects.count() == 1

        # A real reply: exactly one refreshed note, and its own echo stops there.
        sdp.add_conversation(SDP_ID, REPLY, sender=CREATED["request"]["requester"]["email_id"])
        wait_for(lambda: settled(2), what="the refreshed enhancement to settle")
        time.sleep(2)
        assert len(sdp.notes[SDP_ID]) == 2 and Enhancement.objects.count() == 2
        statuses = list(TicketUpdate.objects.values_list("status", flat=True))
        assert statuses.count("refreshed") == 1 and set(statuses) <= {"refreshed", "unchanged"}, statuses
        sdp.on_change = None


def test_an_unexpected_error_is_retried_a_bounded_number_of_times(enhanced, sdp, post_webhook):
    from enhancements.updates import UPDATE_MAX_ATTEMPTS

    # An answer of a shape we do not expect: the sender as a bare string, not an object.
    sdp.conversations[SDP_ID].append({"id": "77", "from": "someone@example.com", "description": "<p>more</p>"})
    response = post_webhook("acme", _updated(), secret=enhanced.secret)
    assert response.status_code == 202
    update = TicketUpdate.objects.get()
    outcomes = []
    for _ in range(UPDATE_MAX_ATTEMPTS + 2):
        TicketUpdate.objects.filter(pk=update.pk).update(next_attempt_at=None)  # the backoff has passed
        outcomes.append(tasks.process_ticket_update(str(update.pk)))
    update.refresh_from_db()
    assert update.status == "failed" and update.attempts == UPDATE_MAX_ATTEMPTS, (outcomes, update.reason)
    assert "unexpected error" in update.reason
    assert outcomes[: UPDATE_MAX_ATTEMPTS - 1] == ["pending"] * (UPDATE_MAX_ATTEMPTS - 1)


def test_the_sweep_fails_an_update_whose_worker_died_in_its_last_attempt(enhanced, post_webhook):
    from enhancements.updates import UPDATE_MAX_ATTEMPTS, UPDATE_STUCK_AFTER, ticket_update_sweep

    post_webhook("acme", _updated(), secret=enhanced.secret)
    long_ago = timezone.now() - UPDATE_STUCK_AFTER - timedelta(minutes=1)
    TicketUpdate.objects.update(status="running", started_at=long_ago, attempts=UPDATE_MAX_ATTEMPTS)
    ticket_update_sweep()
    update = TicketUpdate.objects.get()
    assert update.status == "failed" and "last allowed attempt" in update.reason


def test_leads_see_why_an_update_did_or_did_not_refresh(enhanced, post_webhook, client):
    from tests.review_helpers import support_lead

    post_webhook("acme", servicedesk_fixture("webhook__request_updated"), secret=enhanced.secret)
    _process_updates()
    client.force_login(support_lead())
    page = client.get("/admin/enhancements/ticketupdate/").content.decode()
    assert "No new information" in page and SDP_ID in page
