"""The SDP client against the SDP fake: one test per API fixture, plus envelopes, errors and retries."""

from __future__ import annotations

import json

import pytest

from tests.fakes.fixtures import servicedesk_fixture
from tests.fakes.sdp import FakeServiceDesk
from tickets.sdp.client import ServiceDeskClient, ServiceDeskError, check_base_url


def _client(fake: FakeServiceDesk, **kwargs) -> ServiceDeskClient:
    return ServiceDeskClient(base_url=fake.url, api_key=fake.api_key, auth_type=fake.auth, backoff_base=0.01, **kwargs)


def test_get_request_fixture(sdp, settings):
    settings.SDP_ALLOW_INSECURE_URLS = True
    sdp.add_request(servicedesk_fixture("api__get_request"))
    with _client(sdp) as client:
        request = client.get_request("104322")
    assert request["subject"] == "Shared drive S: not mapping for finance"
    assert request["requester"]["email_id"] == "priya.nair@example.com"
    sent = sdp.requests_log[-1]
    assert sent.headers["authtoken"] == sdp.api_key
    assert sent.headers["accept"] == "application/vnd.manageengine.sdp.v3+json"


def test_list_requests_fixture_and_search_criteria(sdp):
    sdp.fail_next(1, 200, method="GET", body=servicedesk_fixture("api__list_requests"))
    criteria = [{"field": "status.name", "condition": "is", "values": ["Resolved", "Closed"]}]
    with _client(sdp) as client:
        page = client.list_requests(start_index=1, row_count=2, search_criteria=criteria)
    assert [r["id"] for r in page.rows] == ["98765", "98770"]
    assert page.has_more_rows is True and page.start_index == 1 and page.row_count == 2
    sent = sdp.requests_log[-1].input_data
    assert sent["list_info"]["search_criteria"] == criteria
    assert sent["list_info"]["row_count"] == 2


def test_list_requests_pages_through_the_fake(sdp):
    for n in range(1, 6):
        sdp.add_request({"id": str(n), "subject": f"s{n}", "status": {"name": "Resolved"}})
    seen, start = [], 1
    with _client(sdp) as client:
        while True:
            page = client.list_requests(start_index=start, row_count=2)
            seen += [r["id"] for r in page.rows]
            if not page.has_more_rows:
                break
            start = page.start_index + page.row_count
    assert sorted(seen) == ["1", "2", "3", "4", "5"]


def test_notes_and_conversations_come_from_every_page_in_order(sdp):
    sdp.add_request({"id": "104400", "subject": "Long thread"})
    for n in range(250):
        sdp.add_note("104400", f"<p>note {n}</p>")
    for n in range(130):
        sdp.add_conversation("104400", f"reply {n}")
    with _client(sdp) as client:
        notes = client.list_notes("104400")
        conversations = client.list_conversations("104400")
    assert [note["description"] for note in notes] == [f"<p>note {n}</p>" for n in range(250)]
    assert [item["description"] for item in conversations] == [f"reply {n}" for n in range(130)]
    pages = [r.path for r in sdp.requests_log if r.method == "GET" and r.path.endswith(("/notes", "/conversations"))]
    assert len(pages) == 3 + 2  # 100 rows a page


def test_list_notes_fixture(sdp):
    sdp.fail_next(1, 200, method="GET", path_contains="/notes", body=servicedesk_fixture("api__list_notes"))
    with _client(sdp) as client:
        notes = client.list_notes("104321")
    assert len(notes) == 1
    assert "ticket-enhancer:3f2b0c1e-8a0d-4f4e-9b8e-0d1c2b3a4f5e" in notes[0]["description"]


def test_add_note_fixture(sdp):
    sdp.add_request({"id": "104321"})
    sdp.fail_next(1, 200, method="POST", body=servicedesk_fixture("api__add_note"))
    with _client(sdp) as client:
        note = client.add_note("104321", "<p>hello</p>")
    assert note["id"] == "556601"
    sent = sdp.requests_log[-1]
    assert sent.content_type == "application/x-www-form-urlencoded"
    assert json.loads(sent.form["input_data"]) == {
        "request_note": {
            "description": "<p>hello</p>",
            "show_to_requester": False,
            "notify_technician": False,
            "mark_first_response": False,
            "add_to_linked_requests": False,
        }
    }


def test_error_auth_fixture_is_permanent(sdp):
    sdp.fail_next(1, 401, body=servicedesk_fixture("api__error_auth"))
    with _client(sdp) as client, pytest.raises(ServiceDeskError) as caught:
        client.get_request("1")
    assert caught.value.permanent and caught.value.status == 401
    assert "Invalid authtoken" in str(caught.value)
    assert len(sdp.requests_log) == 1  # never retried


def test_error_extra_key_fixture_falls_back_to_note():
    with FakeServiceDesk(api_key="k", note_key="note") as fake:
        fake.add_request({"id": "7"})
        fake.fail_next(1, 400, method="POST", body=servicedesk_fixture("api__error_extra_key"))
        with _client(fake) as client:
            note = client.add_note("7", "<p>x</p>")
        posts = [r for r in fake.requests_log if r.method == "POST"]
        assert [list(r.input_data) for r in posts] == [["request_note"], ["note"]]
        assert fake.notes["7"][0]["id"] == note["id"]


@pytest.mark.parametrize("failure", ["throttle_4015", "throttle_4015_200", 429, 500, 503])
def test_transient_failures_on_reads_are_retried(sdp, failure):
    sdp.add_request({"id": "9", "subject": "s"})
    sdp.fail_next(1, failure, retry_after=0.05 if failure == 429 else None)
    with _client(sdp) as client:
        assert client.get_request("9")["subject"] == "s"
    assert len(sdp.requests_log) == 2


def test_persistent_throttling_is_transient_with_retry_after(sdp):
    sdp.fail_next(5, 429, retry_after=60)
    with _client(sdp) as client, pytest.raises(ServiceDeskError) as caught:
        client.get_request("9")
    assert not caught.value.permanent and caught.value.retry_after == 60
    assert len(sdp.requests_log) == 1  # a long wait goes back to the queue, not a sleep


def test_post_500_is_not_retried_blindly(sdp):
    sdp.add_request({"id": "9"})
    sdp.fail_next(1, 500, method="POST")
    with _client(sdp) as client, pytest.raises(ServiceDeskError) as caught:
        client.add_note("9", "x")
    assert not caught.value.permanent and caught.value.unclear
    assert len(sdp.requests_log) == 1 and not sdp.notes


def test_timeout_is_transient_and_unclear(sdp):
    sdp.add_request({"id": "9"})
    sdp.fail_next(1, "timeout", method="POST", delay=1.0, process=True)
    with _client(sdp, timeout=0.3) as client, pytest.raises(ServiceDeskError) as caught:
        client.add_note("9", "x")
    assert not caught.value.permanent and caught.value.unclear


def test_404_is_permanent(sdp):
    with _client(sdp) as client, pytest.raises(ServiceDeskError) as caught:
        client.get_request("404404")
    assert caught.value.permanent and caught.value.status == 404


def test_zoho_oauth_header():
    with FakeServiceDesk(auth="zoho_oauth", api_key="tok", portal="itdesk") as fake:
        fake.add_request({"id": "1", "subject": "cloud"})
        with _client(fake) as client:
            assert client.get_request("1")["subject"] == "cloud"
        assert fake.requests_log[-1].headers["authorization"] == "Zoho-oauthtoken tok"
        assert fake.requests_log[-1].path == "/app/itdesk/api/v3/requests/1"


@pytest.mark.parametrize(
    "url",
    ["http://sdp.example.com", "https://127.0.0.1", "https://10.0.0.5:8443", "https://[::1]", "ftp://x", "not a url"],
)
def test_insecure_or_private_urls_are_refused(url, settings):
    settings.SDP_ALLOW_INSECURE_URLS = False
    with pytest.raises(ServiceDeskError) as caught:
        check_base_url(url)
    assert caught.value.permanent
