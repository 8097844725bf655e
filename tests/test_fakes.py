"""Prove the loopback fakes of ServiceDesk Plus and OpenAI behave as the project's clients expect."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from openai.types.chat import ChatCompletion
from openai.types.shared_params import ResponseFormatJSONSchema
from pydantic import BaseModel

from enhancements.llm import OUTPUT_SCHEMA
from tests.fakes import FakeOpenAI, FakeServiceDesk, servicedesk_fixture
from tests.fakes.fixtures import SERVICEDESK_FIXTURES

REPO_ROOT = Path(__file__).resolve().parent.parent
ACCEPT = "application/vnd.manageengine.sdp.v3+json"
DAY_MS = 86_400_000
BASE_MS = 1_761_000_000_000

RESPONSE_FORMAT: ResponseFormatJSONSchema = {
    "type": "json_schema",
    "json_schema": {"name": "enhancement", "schema": OUTPUT_SCHEMA, "strict": True},
}
PROMPT = (
    "Ticket 104321\n"
    "Subject: Outlook keeps prompting for password\n"
    "Description: asks every few minutes since the MFA change.\n\n"
    "<similar_tickets>\n"
    "- #98765 Outlook password loop (resolved)\n"
    "- id: 98770 VPN drops every 10 minutes\n"
    "</similar_tickets>"
)


@pytest.fixture
def desk() -> Iterator[FakeServiceDesk]:
    """Yield a running on-prem fake holding the get-request fixture."""
    with FakeServiceDesk(auth="authtoken", api_key="k-123") as fake:
        fake.add_request(servicedesk_fixture("api__get_request"))
        yield fake


@pytest.fixture
def llm() -> Iterator[FakeOpenAI]:
    """Yield a running fake OpenAI API."""
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    """Yield one HTTP client for the module; building a client per call costs ~50 ms of TLS setup."""
    with httpx.Client(timeout=5) as client:
        yield client


# Building an openai client loads TLS certificates (~50 ms); tests share one transport instead.
_OPENAI_TRANSPORT = openai.DefaultHttpxClient()


def _client(llm: FakeOpenAI, **options: Any) -> openai.OpenAI:
    options = {"api_key": llm.api_key, "max_retries": 0, "http_client": _OPENAI_TRANSPORT, **options}
    return openai.OpenAI(base_url=llm.url, **options)


def _complete(client: openai.OpenAI, prompt: str = PROMPT) -> ChatCompletion:
    return client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "You help IT technicians."}, {"role": "user", "content": prompt}],
        response_format=RESPONSE_FORMAT,
    )


def _content(completion: ChatCompletion) -> str:
    content = completion.choices[0].message.content
    assert content is not None
    return content


def _form(payload: dict[str, Any]) -> dict[str, str]:
    return {"input_data": json.dumps(payload)}


def _note(description: str = "<p>Try this</p>") -> dict[str, Any]:
    return {
        "request_note": {
            "description": description,
            "show_to_requester": False,
            "notify_technician": False,
            "mark_first_response": False,
            "add_to_linked_requests": False,
        }
    }


def _list(http: httpx.Client, desk: FakeServiceDesk, path: str, list_info: dict[str, Any]) -> httpx.Response:
    params = {"input_data": json.dumps({"list_info": list_info})}
    return http.get(f"{desk.url}{path}", params=params, headers=desk.auth_headers())


# -- fixtures --------------------------------------------------------------------------------------------------


def test_fixtures_are_named_by_event_and_variant_and_parse() -> None:
    names = sorted(path.name for path in SERVICEDESK_FIXTURES.glob("*.json"))
    assert "api__error_auth.json" in names
    assert "webhook__request_created.json" in names
    for name in names:
        assert re.fullmatch(r"[a-z_]+__[a-z0-9_]+\.json", name)
        json.loads((SERVICEDESK_FIXTURES / name).read_text(encoding="utf-8"))


# -- ServiceDesk Plus: auth and envelopes -------------------------------------------------------------------------


def test_get_request_answers_the_success_envelope(http: httpx.Client, desk: FakeServiceDesk) -> None:
    answer = http.get(f"{desk.url}/api/v3/requests/104322", headers=desk.auth_headers())

    assert answer.status_code == 200
    assert answer.json() == servicedesk_fixture("api__get_request")


@pytest.mark.parametrize("headers", [{}, {"authtoken": "wrong"}, {"Authorization": "Zoho-oauthtoken k-123"}])
def test_on_prem_rejects_missing_or_wrong_authtoken(
    http: httpx.Client, desk: FakeServiceDesk, headers: dict[str, str]
) -> None:
    answer = http.get(f"{desk.url}/api/v3/requests/104322", headers={"Accept": ACCEPT, **headers})

    assert answer.status_code == 401
    assert answer.json() == servicedesk_fixture("api__error_auth")


def test_cloud_portal_needs_zoho_oauthtoken_under_app_portal(http: httpx.Client) -> None:
    with FakeServiceDesk(auth="zoho_oauth", api_key="tok", portal="itdesk") as cloud:
        cloud.add_request({"id": 7, "subject": "Printer"})
        assert cloud.url.endswith("/app/itdesk")
        good = {"Accept": ACCEPT, "Authorization": "Zoho-oauthtoken tok"}

        ok = http.get(f"{cloud.url}/api/v3/requests/7", headers=good)
        authtoken = http.get(f"{cloud.url}/api/v3/requests/7", headers={"Accept": ACCEPT, "authtoken": "tok"})
        no_portal = http.get(f"{cloud.origin}/api/v3/requests/7", headers=good)

    assert ok.json()["request"] == {"id": "7", "subject": "Printer"}
    assert authtoken.status_code == 401
    assert no_portal.status_code == 404


def test_missing_accept_header_is_rejected_and_recorded(http: httpx.Client, desk: FakeServiceDesk) -> None:
    answer = http.get(f"{desk.url}/api/v3/requests/104322", headers={"authtoken": "k-123", "Accept": "*/*"})

    assert answer.status_code == 400
    assert answer.json()["response_status"]["status"] == "failed"
    assert desk.requests_log[-1].headers["accept"] == "*/*"


def test_unknown_request_is_404_with_failed_envelope(http: httpx.Client, desk: FakeServiceDesk) -> None:
    answer = http.get(f"{desk.url}/api/v3/requests/1", headers=desk.auth_headers())

    assert answer.status_code == 404
    status = answer.json()["response_status"]
    assert status["status_code"] == 4000
    assert status["messages"][0]["message"]


# -- ServiceDesk Plus: listing ------------------------------------------------------------------------------------


def _seed_history(desk: FakeServiceDesk) -> None:
    statuses = ["Resolved", "Closed", "Open", "Resolved", "Closed", "Resolved"]
    for number, status in enumerate(statuses):
        request: dict[str, Any] = {
            "id": str(500 + number),
            "subject": f"Ticket {number}",
            "description": "<p>long text</p>",
            "status": {"name": status},
            "created_time": {"value": str(BASE_MS + number * DAY_MS)},
            "resolution": {"content": "done"},
        }
        if status != "Open":
            request["resolved_time"] = {"value": str(BASE_MS + number * DAY_MS + 3_600_000)}
        desk.add_request(request)


def test_list_requests_filters_sorts_and_pages(http: httpx.Client, desk: FakeServiceDesk) -> None:
    _seed_history(desk)
    criteria = [
        {"field": "status.name", "condition": "is", "values": ["Resolved", "Closed"]},
        {
            "field": "resolved_time",
            "condition": "between",
            "values": [str(BASE_MS + DAY_MS), str(BASE_MS + 5 * DAY_MS)],
            "logical_operator": "AND",
        },
    ]
    list_info = {
        "row_count": 2,
        "start_index": 1,
        "sort_field": "created_time",
        "sort_order": "desc",
        "get_total_count": True,
        "search_criteria": criteria,
    }
    pages = []
    while True:
        body = _list(http, desk, "/api/v3/requests", list_info).json()
        pages.append(body)
        if not body["list_info"]["has_more_rows"]:
            break
        list_info["start_index"] += body["list_info"]["row_count"]

    ids = [row["id"] for page in pages for row in page["requests"]]
    assert ids == ["504", "503", "501"]
    assert [page["list_info"]["row_count"] for page in pages] == [2, 1]
    assert pages[0]["list_info"]["total_count"] == 3
    assert pages[0]["response_status"] == [{"status_code": 2000, "status": "success"}]
    assert all("description" not in row and "resolution" not in row for row in pages[0]["requests"])


def test_list_requests_rejects_row_count_over_100(http: httpx.Client, desk: FakeServiceDesk) -> None:
    answer = _list(http, desk, "/api/v3/requests", {"row_count": 101})

    assert answer.status_code == 400
    assert answer.json()["response_status"]["messages"][0]["field"] == "row_count"


# -- ServiceDesk Plus: notes --------------------------------------------------------------------------------------


def test_add_note_records_flags_and_answers_like_sdp(http: httpx.Client, desk: FakeServiceDesk) -> None:
    answer = http.post(f"{desk.url}/api/v3/requests/104322/notes", data=_form(_note()), headers=desk.auth_headers())

    assert answer.status_code == 200
    body = answer.json()
    assert body["response_status"] == {"status_code": 2000, "status": "success"}
    assert set(body["request_note"]) == set(servicedesk_fixture("api__add_note")["request_note"])
    [note] = desk.notes["104322"]
    assert note["id"] == body["request_note"]["id"]
    assert note["description"] == "<p>Try this</p>"
    assert [note[flag] for flag in ("show_to_requester", "notify_technician")] == [False, False]
    assert note["mark_first_response"] is False
    assert note["add_to_linked_requests"] is False
    assert desk.requests_log[-1].input_data == _note()


def test_add_note_requires_form_encoded_input_data(http: httpx.Client, desk: FakeServiceDesk) -> None:
    url = f"{desk.url}/api/v3/requests/104322/notes"

    as_json = http.post(url, json=_note(), headers=desk.auth_headers())
    no_field = http.post(url, data={"other": "x"}, headers=desk.auth_headers())
    no_description = http.post(
        url, data=_form({"request_note": {"show_to_requester": False}}), headers=desk.auth_headers()
    )

    assert [as_json.status_code, no_field.status_code, no_description.status_code] == [400] * 3
    message = no_description.json()["response_status"]["messages"][0]
    assert message["field"] == "description"
    assert as_json.json()["response_status"]["status"] == "failed"
    assert desk.notes["104322"] == []


def test_note_key_note_build_rejects_request_note_then_accepts_note(http: httpx.Client) -> None:
    with FakeServiceDesk(note_key="note") as old_build:
        old_build.add_request({"id": "9"})
        url = f"{old_build.url}/api/v3/requests/9/notes"

        first = http.post(url, data=_form(_note()), headers=old_build.auth_headers())
        retry = http.post(url, data=_form({"note": _note()["request_note"]}), headers=old_build.auth_headers())

    assert first.status_code == 400
    assert first.json() == servicedesk_fixture("api__error_extra_key")
    assert retry.status_code == 200
    assert retry.json()["note"]["description"] == "<p>Try this</p>"
    assert len(old_build.notes["9"]) == 1


def test_default_build_rejects_the_note_key(http: httpx.Client, desk: FakeServiceDesk) -> None:
    answer = http.post(
        f"{desk.url}/api/v3/requests/104322/notes",
        data=_form({"note": {"description": "x"}}),
        headers=desk.auth_headers(),
    )

    assert answer.status_code == 400
    assert answer.json()["response_status"]["messages"][0]["field"] == "note"


def test_list_notes_pages_like_sdp(http: httpx.Client, desk: FakeServiceDesk) -> None:
    for number in range(3):
        desk.add_note("104322", f"<p>note {number}</p>")

    first = _list(http, desk, "/api/v3/requests/104322/notes", {"row_count": 2}).json()
    second = _list(http, desk, "/api/v3/requests/104322/notes", {"row_count": 2, "start_index": 3}).json()

    assert [note["description"] for note in first["request_notes"]] == ["<p>note 0</p>", "<p>note 1</p>"]
    assert first["list_info"] == {"has_more_rows": True, "start_index": 1, "row_count": 2}
    assert second["list_info"]["has_more_rows"] is False
    assert second["response_status"] == [{"status_code": 2000, "status": "success"}]


# -- ServiceDesk Plus: failure injection ----------------------------------------------------------------------------


def test_fail_next_matches_path_and_method_then_recovers(http: httpx.Client, desk: FakeServiceDesk) -> None:
    desk.fail_next(2, 503, path_contains="/notes", method="POST")
    url = f"{desk.url}/api/v3/requests/104322"

    unaffected = http.get(url, headers=desk.auth_headers())
    statuses = [
        http.post(f"{url}/notes", data=_form(_note()), headers=desk.auth_headers()).status_code for _ in range(3)
    ]

    assert unaffected.status_code == 200
    assert statuses == [503, 503, 200]
    assert len(desk.notes["104322"]) == 1
    assert desk.pending_failures() == 0


def test_fail_next_statuses_have_sdp_bodies_and_headers(http: httpx.Client, desk: FakeServiceDesk) -> None:
    desk.fail_next(status=429, retry_after=3)
    desk.fail_next(status=401)
    desk.fail_next(status="throttle_4015")
    desk.fail_next(status="throttle_4015_200")
    desk.fail_next(status=502, body="<html>Bad gateway</html>")
    url = f"{desk.url}/api/v3/requests/104322"

    answers = [http.get(url, headers=desk.auth_headers()) for _ in range(5)]

    limited, unauthorised, throttled, throttled_200, gateway = answers
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "3")
    assert unauthorised.json() == servicedesk_fixture("api__error_auth")
    for answer, status in ((throttled, 400), (throttled_200, 200)):
        assert answer.status_code == status
        message = answer.json()["response_status"]["messages"][0]
        assert message["status_code"] == 4015
        assert "maximum access limit" in message["message"]
    assert (gateway.status_code, gateway.text) == (502, "<html>Bad gateway</html>")


def test_fail_next_is_thread_safe(http: httpx.Client, desk: FakeServiceDesk) -> None:
    desk.fail_next(5, 500)
    statuses: list[int] = []
    url = f"{desk.url}/api/v3/requests/104322"

    def call() -> None:
        statuses.append(http.get(url, headers=desk.auth_headers()).status_code)

    threads = [threading.Thread(target=call) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(statuses) == [200] * 15 + [500] * 5


@pytest.mark.parametrize(("process", "stored"), [(True, 1), (False, 0)])
def test_timeout_leaves_the_note_stored_only_when_processed(
    http: httpx.Client, desk: FakeServiceDesk, process: bool, stored: int
) -> None:
    desk.fail_next(status="timeout", delay=2, process=process)

    with pytest.raises(httpx.ReadTimeout):
        http.post(
            f"{desk.url}/api/v3/requests/104322/notes", data=_form(_note()), headers=desk.auth_headers(), timeout=0.3
        )

    assert len(desk.notes["104322"]) == stored


def test_latency_delays_every_answer(http: httpx.Client, desk: FakeServiceDesk) -> None:
    desk.latency = 0.2
    started = time.monotonic()

    http.get(f"{desk.url}/api/v3/requests/104322", headers=desk.auth_headers())

    assert time.monotonic() - started >= 0.2


def test_disconnect_stop_and_restart_on_the_same_url(desk: FakeServiceDesk) -> None:
    desk.fail_next(status="disconnect")
    with httpx.Client(headers=desk.auth_headers()) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            client.get(f"{desk.url}/api/v3/requests/104322")
        assert client.get(f"{desk.url}/api/v3/requests/104322").status_code == 200

        desk.stop()

        # The pooled keep-alive connection must not keep reaching a stopped fake.
        with pytest.raises(httpx.TransportError):
            client.get(f"{desk.url}/api/v3/requests/104322")
        desk.start()
        assert client.get(f"{desk.url}/api/v3/requests/104322").status_code == 200


def test_reset_forgets_state_but_keeps_configuration(http: httpx.Client, desk: FakeServiceDesk) -> None:
    desk.fail_next(3, 500)
    desk.add_note("104322", "<p>old</p>")
    http.get(f"{desk.url}/api/v3/requests/104322", headers=desk.auth_headers())

    desk.reset()

    assert (desk.requests, dict(desk.notes), desk.requests_log) == ({}, {}, [])
    assert desk.pending_failures() == 0
    assert http.get(f"{desk.url}/api/v3/requests/104322", headers=desk.auth_headers()).status_code == 404


def _run_cli(module: str, *args: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", module, "--port", "0", *args],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def test_sdp_cli_serves_the_seeded_request(http: httpx.Client) -> None:
    process, url = _run_cli(
        "tests.fakes.sdp", "--api-key", "cli", "--seed", "tests/fixtures/servicedesk/api__get_request.json"
    )
    try:
        answer = http.get(f"{url}/api/v3/requests/104322", headers={"Accept": ACCEPT, "authtoken": "cli"})
    finally:
        process.terminate()
        process.wait(timeout=5)

    assert answer.json()["request"]["subject"] == "Shared drive S: not mapping for finance"


# -- OpenAI ------------------------------------------------------------------------------------------------------


def test_openai_client_gets_content_matching_the_schema(llm: FakeOpenAI) -> None:
    completion = _complete(_client(llm))

    output = json.loads(_content(completion))
    jsonschema.validate(output, OUTPUT_SCHEMA)  # the schema the product validates with, not a copy
    assert "Outlook keeps prompting for password" in output["summary"]
    assert len(output["probable_causes"]) == len(output["suggested_steps"]) == 2
    assert output["related_tickets"] == ["98765", "98770"]
    assert output["priority_suggestion"] == "Low"
    assert 0 <= output["confidence"] <= 1
    assert completion.model == "gpt-4o-mini"
    usage = completion.usage
    assert usage is not None
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens > 0
    recorded = llm.requests_log[-1]
    assert recorded.headers["authorization"] == f"Bearer {llm.api_key}"
    assert recorded.json["response_format"] == RESPONSE_FORMAT


def test_openai_related_tickets_are_empty_without_context(llm: FakeOpenAI) -> None:
    completion = _complete(_client(llm), prompt="Subject: Printer jammed\nTicket 42 on floor 3")

    assert json.loads(_content(completion))["related_tickets"] == []


class _Cause(BaseModel):
    text: str
    likelihood: int


class _Enhancement(BaseModel):
    summary: str
    causes: list[_Cause]
    related_tickets: list[int]


def test_openai_parse_helper_and_raw_response_work(llm: FakeOpenAI) -> None:
    client = _client(llm)

    parsed = client.chat.completions.parse(
        model="m", messages=[{"role": "user", "content": PROMPT}], response_format=_Enhancement
    )
    raw = client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "Subject: VPN"}]
    )

    result = parsed.choices[0].message.parsed
    assert result is not None
    assert result.related_tickets == [98765, 98770]
    assert len(result.causes) == 2
    assert raw.headers["x-request-id"].startswith("req_")
    assert "VPN" in (raw.parse().choices[0].message.content or "")


def test_openai_rejects_a_wrong_key(llm: FakeOpenAI) -> None:
    client = _client(llm, api_key="wrong")

    with pytest.raises(openai.AuthenticationError):
        _complete(client)


def test_openai_failures_are_retried_by_the_client(llm: FakeOpenAI) -> None:
    llm.fail_next(1, 429, retry_after=0.05)

    _complete(_client(llm, max_retries=1))

    assert [entry.headers["x-stainless-retry-count"] for entry in llm.requests_log] == ["0", "1"]


@pytest.mark.parametrize(
    ("status", "error"),
    [(500, openai.InternalServerError), (429, openai.RateLimitError), (401, openai.AuthenticationError)],
)
def test_openai_injected_http_errors(llm: FakeOpenAI, status: int, error: type[openai.APIStatusError]) -> None:
    llm.fail_next(status=status)

    with pytest.raises(error):
        _complete(_client(llm))


def test_openai_timeout_invalid_json_and_schema_violation(llm: FakeOpenAI) -> None:
    client = _client(llm, timeout=0.3)
    llm.fail_next(status="timeout", delay=2)
    llm.fail_next(status="invalid_json")
    llm.fail_next(status="schema_violation")

    with pytest.raises(openai.APITimeoutError):
        _complete(client)
    not_json = _content(_complete(client))
    incomplete = json.loads(_content(_complete(client)))

    with pytest.raises(ValueError):
        json.loads(not_json)
    assert not set(OUTPUT_SCHEMA["required"]) & set(incomplete)


def test_openai_set_response_forces_content_until_cleared(llm: FakeOpenAI) -> None:
    client = _client(llm)
    llm.set_response({"summary": "forced"})

    forced = [_content(_complete(client)) for _ in range(2)]
    llm.set_response(None)
    default = json.loads(_content(_complete(client)))

    assert forced == ['{"summary": "forced"}'] * 2
    assert "Outlook" in default["summary"]


def test_openai_latency_is_served_concurrently(llm: FakeOpenAI) -> None:
    llm.latency = 0.2
    client = _client(llm)
    threads = [threading.Thread(target=_complete, args=(client,)) for _ in range(30)]
    started = time.monotonic()

    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    elapsed = time.monotonic() - started
    assert len(llm.requests_log) == 30
    # One after another would take 6 s.
    assert 0.2 <= elapsed < 1.5


def test_openai_cli_prints_a_working_base_url() -> None:
    process, url = _run_cli("tests.fakes.openai", "--api-key", "cli-key")
    try:
        client = openai.OpenAI(base_url=url, api_key="cli-key", max_retries=0, http_client=_OPENAI_TRANSPORT)
        completion = _complete(client)
    finally:
        process.terminate()
        process.wait(timeout=5)

    assert url.endswith("/v1")
    assert json.loads(_content(completion))["summary"]


# The kinds of OpenAI-compatible server: what each sends back, as a plain client sees it.
@pytest.mark.parametrize(
    ("kind", "response_format", "status", "says"),
    [
        ("vllm", RESPONSE_FORMAT, 400, "not supported by xgrammar"),
        ("lmstudio", {"type": "json_object"}, 400, "'response_format.type' must be 'json_schema' or 'text'"),
        ("old-gateway", {"type": "json_object"}, 400, "Unrecognized request argument supplied: response_format"),
        ("old-gateway", RESPONSE_FORMAT, 400, "Unrecognized request argument supplied: response_format"),
        ("ollama-old", RESPONSE_FORMAT, 200, "```json"),
        ("ignores-format", {"type": "json_object"}, 200, "```json"),
        ("lmstudio", RESPONSE_FORMAT, 200, '"summary"'),
        ("vllm", {"type": "json_object"}, 200, '"summary"'),
    ],
)
def test_openai_fake_kinds_answer_like_those_servers(llm: FakeOpenAI, kind, response_format, status, says) -> None:
    llm.set_kind(kind)
    answer = httpx.post(
        f"{llm.url}/chat/completions",
        headers={"Authorization": f"Bearer {llm.api_key}"},
        json={"model": "m", "messages": [{"role": "user", "content": PROMPT}], "response_format": response_format},
    )
    assert answer.status_code == status
    text = answer.json()["choices"][0]["message"]["content"] if status == 200 else answer.text
    assert says in text
    assert llm.chat_requests(mode=response_format["type"]) == 1 and llm.chat_requests(mode="prompt") == 0


def test_openai_fake_newlines_and_nan_kinds_write_what_strict_json_refuses(llm: FakeOpenAI) -> None:
    llm.set_kind("newlines")
    content = _content(_complete(_client(llm)))
    with pytest.raises(ValueError):
        json.loads(content)
    assert "\nSecond line:\tindented" in json.loads(content, strict=False)["summary"]
    llm.set_kind("nan")
    output = json.loads(_content(_complete(_client(llm))))
    assert output["confidence"] != output["confidence"] and output["summary"].endswith("\x00")
