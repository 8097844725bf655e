"""Local and other OpenAI-compatible servers: the output mode is negotiated per endpoint, remembered, and every
kind of server yields a valid note (or the labelled offline fallback), for the enhancement and for triage."""

from __future__ import annotations

import json

import pytest
from django.conf import settings as django_settings

from enhancements import services
from enhancements.llm import OUTPUT_SCHEMA
from enhancements.llm_structured import (
    MODE_TTL,
    NONE,
    NONE_TTL,
    PROMPT_UNPROVEN,
    _mode_key,
    mode_remember,
    mode_remembered,
    modes_forget,
    structured_complete,
)
from enhancements.models import Enhancement
from enhancements.triage.choices import choices_for
from enhancements.triage.llm import triage_schema
from enhancements.triage.services import triage_suggest
from tests.fakes.openai import _mode_of
from tests.triage_helpers import webhook_enhancement

pytestmark = pytest.mark.django_db

# kind -> (the mode remembered, completions the first call takes to find it)
KINDS = {
    "openai": ("json_schema", 1),
    "lmstudio": ("json_schema", 1),
    "newlines": ("json_schema", 1),
    "vllm": ("json_object", 2),  # strict json_schema refused with a 400
    "ollama-old": ("json_object", 3),  # json_schema ignored twice (prose + fenced JSON)
    "old-gateway": ("prompt", 3),  # every response_format refused with a 400
    "ignores-format": ("prompt", 5),  # both response_formats ignored twice each
}


def _process(post_webhook, tenant, request_id: str, subject: str = "VPN drops every few minutes") -> Enhancement:
    payload = {"request": {"id": request_id, "subject": subject, "description": f"{subject} since this morning."}}
    response = post_webhook("acme", payload, secret=tenant.secret)
    assert response.status_code == 202, response.content
    enhancement_id = response.json()["enhancement_id"]
    services.enhancement_process(enhancement_id=enhancement_id)
    return Enhancement.objects.get(pk=enhancement_id)


def _modes(fake) -> list[str]:
    return [_mode_of(r.json) for r in fake.requests_log if r.path.endswith("/chat/completions")]


def _remembered(schema: dict | None = None) -> str | None:
    """Return the mode remembered for the fake's endpoint and model, for the note's schema unless told."""
    return mode_remembered(base_url=django_settings.OPENAI_BASE_URL, model="fake-model", schema=schema or OUTPUT_SCHEMA)


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_of_server_yields_a_valid_note_and_the_mode_is_remembered(tenant, post_webhook, openai_fake, kind):
    mode, probes = KINDS[kind]
    openai_fake.set_kind(kind)

    first = _process(post_webhook, tenant, "1")
    assert first.status == Enhancement.Status.COMPLETED
    assert (first.provider, first.error) == ("openai", ""), first.error
    assert "VPN drops" in first.output["summary"]
    assert first.output["suggested_steps"] and "offline fallback" not in first.note_html
    assert _remembered() == mode
    assert openai_fake.chat_requests() == probes
    if kind == "newlines":
        # Raw newlines inside strings were read, not refused, and are kept in the stored text.
        assert "\nSecond line:\tindented" in first.output["summary"]

    # The next call goes straight to the remembered mode: one request.
    second = _process(post_webhook, tenant, "2", subject="Printer offline on floor 2")
    assert (second.provider, second.error) == ("openai", "")
    assert "Printer offline" in second.output["summary"]
    assert openai_fake.chat_requests() == probes + 1
    assert _modes(openai_fake)[-1] == mode


def test_the_prompt_modes_describe_the_schema_to_the_model(tenant, post_webhook, openai_fake):
    openai_fake.set_kind("old-gateway")
    _process(post_webhook, tenant, "1")
    bodies = [r.json for r in openai_fake.requests_log]
    assert [_mode_of(b) for b in bodies] == ["json_schema", "json_object", "prompt"]
    system = bodies[-1]["messages"][0]["content"]
    schema = json.loads(system.split("<json_schema>", 1)[1].split("</json_schema>", 1)[0])
    assert "probable_causes" in schema["required"]
    # The ticket stays in the user message, delimited; the schema is ours, in the system message.
    assert "<json_schema>" not in bodies[-1]["messages"][1]["content"]


def test_lmstudio_refusing_json_object_after_json_schema_failed_steps_down_to_the_prompt(
    tenant, post_webhook, openai_fake
):
    # LM Studio 0.4.7 answered structured requests with an empty message (lmstudio-bug-tracker #1684).
    openai_fake.set_kind("lmstudio")
    openai_fake.fail_next(2, "invalid_json")
    enhancement = _process(post_webhook, tenant, "1")
    assert (enhancement.provider, enhancement.error) == ("openai", "")
    assert _modes(openai_fake) == ["json_schema", "json_schema", "json_object", "prompt"]
    assert _remembered() == "prompt"


def test_one_odd_answer_from_a_server_that_honours_the_mode_changes_nothing(tenant, post_webhook, openai_fake):
    openai_fake.fail_next(1, "invalid_json")
    enhancement = _process(post_webhook, tenant, "1")
    assert enhancement.provider == "openai"
    assert _modes(openai_fake) == ["json_schema", "json_schema"]
    assert _remembered() == "json_schema"


@pytest.mark.parametrize("failure", ["refusal", "length"])
def test_a_refusal_or_a_cut_off_answer_is_not_a_mode_the_server_ignores(tenant, post_webhook, openai_fake, failure):
    # Twice alike (likely for the same ticket) must not downgrade the endpoint for every tenant for a day.
    openai_fake.fail_next(2, failure)
    enhancement = _process(post_webhook, tenant, "1")
    assert enhancement.provider == "offline" and enhancement.error.startswith("LLM unavailable")
    assert ("refused" if failure == "refusal" else "token limit") in enhancement.error
    assert _modes(openai_fake) == ["json_schema", "json_schema"]
    assert _remembered() is None


@pytest.mark.parametrize(
    ("failure", "calls"),
    [
        pytest.param(500, 3, id="5xx"),
        pytest.param(429, 3, id="429"),
        pytest.param("timeout", 3, id="timeout"),
        pytest.param(400, 1, id="400-about-something-else"),
        pytest.param(401, 1, id="401"),
    ],
)
def test_errors_that_do_not_name_the_mode_never_step_down(tenant, post_webhook, openai_fake, settings, failure, calls):
    settings.LLM_TIMEOUT = 0.3
    openai_fake.fail_next(calls, failure, retry_after=0 if failure == 429 else None, delay=1.0)
    enhancement = _process(post_webhook, tenant, "1")
    assert enhancement.provider == "offline" and enhancement.error.startswith("LLM unavailable")
    assert _modes(openai_fake) == ["json_schema"] * calls
    assert _remembered() is None


def test_when_no_mode_works_the_offline_note_is_used_and_says_why(tenant, post_webhook, openai_fake):
    openai_fake.set_kind("old-gateway")
    openai_fake.set_response("I am sorry, I cannot help with this ticket.")
    enhancement = _process(post_webhook, tenant, "1")
    assert enhancement.status == Enhancement.Status.COMPLETED
    assert enhancement.provider == "offline"
    assert "offline fallback" in enhancement.note_html
    assert "no JSON object" in enhancement.error
    assert "json_schema unsupported" in enhancement.error and "Unrecognized request argument" in enhancement.error
    assert _modes(openai_fake) == ["json_schema", "json_object", "prompt", "prompt"]
    # One ticket's prose may be its own (a refusal, an injected "answer in prose"): not yet "no mode works".
    assert _remembered() == PROMPT_UNPROVEN


def test_one_ticket_answered_in_prose_does_not_switch_the_llm_off_for_everyone(tenant, post_webhook, openai_fake):
    # Before: the first ticket's prose remembered "none" for an hour, and every tenant's notes went offline.
    openai_fake.set_kind("old-gateway")
    openai_fake.set_response("I am sorry, I cannot help with this ticket.")
    first = _process(post_webhook, tenant, "1")
    assert first.provider == "offline" and "tries the prompt mode once more" in first.error
    openai_fake.set_response(None)
    second = _process(post_webhook, tenant, "2", subject="Printer offline on floor 2")
    assert (second.provider, second.error) == ("openai", "")
    assert _modes(openai_fake) == ["json_schema", "json_object", "prompt", "prompt", "prompt"]
    assert _remembered() == "prompt"


def test_when_no_mode_works_the_next_notes_go_straight_to_the_offline_note_for_an_hour(
    tenant, post_webhook, openai_fake, settings
):
    # Before: every note probed all three modes again, six generations each, longer than a note may take.
    openai_fake.set_kind("no-json")
    first = _process(post_webhook, tenant, "1")
    assert (first.status, first.provider) == (Enhancement.Status.COMPLETED, "offline")
    assert "offline fallback" in first.note_html
    assert "No structured-output mode gave a JSON object" in first.error and "60 min" in first.error
    assert _modes(openai_fake) == ["json_schema"] * 2 + ["json_object"] * 2 + ["prompt"] * 2
    assert _remembered() == PROMPT_UNPROVEN
    # The next ticket tries the prompt mode once more; no JSON again: the endpoint is given up for the hour.
    again = _process(post_webhook, tenant, "1b", subject="Mail bounces")
    assert (again.status, again.provider) == (Enhancement.Status.COMPLETED, "offline")
    assert "No structured-output mode works" in again.error and "not asked again for 60 min" in again.error
    assert _modes(openai_fake)[6:] == ["prompt"] * 2
    assert _remembered() == NONE
    if settings.REDIS_URL:
        import redis

        key = _mode_key(settings.OPENAI_BASE_URL, "fake-model", OUTPUT_SCHEMA)
        ttl = redis.Redis.from_url(settings.REDIS_URL).ttl(key)
        assert 0 < ttl <= NONE_TTL < MODE_TTL

    second = _process(post_webhook, tenant, "2", subject="Printer offline on floor 2")
    assert (second.status, second.provider) == (Enhancement.Status.COMPLETED, "offline")
    assert "offline fallback" in second.note_html and "Printer offline" in second.note_html
    assert "No structured-output mode worked" in second.error and "not asked again" in second.error
    assert openai_fake.chat_requests() == 8  # not one request for the third note

    # Once the memory is gone (the hour over, or cleared), the endpoint is probed again from the top.
    modes_forget()
    openai_fake.set_kind("openai")
    third = _process(post_webhook, tenant, "3")
    assert (third.provider, third.error) == ("openai", "")
    assert _modes(openai_fake)[8:] == ["json_schema"]


def test_a_remembered_prompt_mode_failing_for_one_ticket_is_not_no_mode_works(tenant, post_webhook, openai_fake):
    mode_remember(base_url=django_settings.OPENAI_BASE_URL, model="fake-model", schema=OUTPUT_SCHEMA, mode="prompt")
    openai_fake.set_kind("no-json")
    enhancement = _process(post_webhook, tenant, "1")
    assert enhancement.provider == "offline" and "prompt mode, asked twice" in enhancement.error
    assert _modes(openai_fake) == ["prompt", "prompt"]
    assert _remembered() == "prompt"


def test_a_mode_learned_for_one_schema_is_not_applied_to_another(openai_fake):
    # A grammar backend may refuse the note's schema and take triage's: each schema negotiates its own mode.
    other = {"type": "object", "additionalProperties": False, "required": ["group"],
             "properties": {"group": {"type": "string", "enum": ["Network", "Desktop", ""]}}}  # fmt: skip
    call = {"system": "Route the ticket.", "user": "<ticket>\nSubject: VPN drops\n</ticket>", "model": "fake-model"}
    openai_fake.set_kind("vllm")
    assert structured_complete(schema=OUTPUT_SCHEMA, name="ticket_enhancement", **call).mode == "json_object"
    openai_fake.set_kind("openai")
    result = structured_complete(schema=other, name="ticket_triage", **call)
    assert _modes(openai_fake) == ["json_schema", "json_object", "json_schema"]
    assert (result.mode, result.output["group"]) == ("json_schema", "Network")
    assert (_remembered(), _remembered(other)) == ("json_object", "json_schema")


# A 400/422 that echoes the request (the ticket below mentions response_format) does not refuse the mode; one
# whose message fields name it does.
_ECHO = "Subject: Our API answers 'response_format json_schema is not supported' since the upgrade"


@pytest.mark.parametrize(
    ("status", "body", "refusal"),
    [
        pytest.param(
            422,
            {"detail": [{"type": "string_too_long", "loc": ["body", "messages", 1, "content"],
                         "msg": "String should have at most 16000 characters", "input": _ECHO}]},
            False,
            id="pydantic-422-echoing-the-input",
        ),
        pytest.param(
            400,
            {"message": "This model's maximum context length is 8192 tokens.", "type": "BadRequestError",
             "request": {"messages": [{"role": "user", "content": _ECHO}]}},
            False,
            id="gateway-400-echoing-the-request",
        ),
        pytest.param(
            400,
            {"error": {"message": "Invalid value: 'messages'.", "type": "invalid_request_error", "param": "messages",
                       "code": None, "prompt": _ECHO}},
            False,
            id="openai-400-about-something-else",
        ),
        pytest.param(
            422,
            {"detail": [{"type": "extra_forbidden", "loc": ["body", "response_format"],
                         "msg": "Extra inputs are not permitted", "input": {"type": "json_schema"}}]},
            True,
            id="pydantic-422-refusing-response_format",
        ),
    ],
)  # fmt: skip
def test_only_the_error_message_fields_decide_a_mode_refusal(tenant, post_webhook, openai_fake, status, body, refusal):
    openai_fake.fail_next(1, status, body=body)
    enhancement = _process(post_webhook, tenant, "1")
    if refusal:
        assert (enhancement.provider, enhancement.error) == ("openai", "")
        assert _modes(openai_fake) == ["json_schema", "json_object"] and _remembered() == "json_object"
    else:
        assert enhancement.provider == "offline" and f"HTTP {status}" in enhancement.error
        assert _modes(openai_fake) == ["json_schema"] and _remembered() is None


def test_a_model_writing_nan_and_nul_gets_the_offline_note_not_a_crash_or_a_retry(tenant, post_webhook, openai_fake):
    # Before: NaN passed the schema (NaN < 0 and NaN > 1 are both false), the note could not be rendered
    # ("cannot convert float NaN to integer") and the enhancement was retried until it failed.
    openai_fake.set_kind("nan")
    enhancement = _process(post_webhook, tenant, "1")
    assert enhancement.status == Enhancement.Status.COMPLETED
    assert enhancement.provider == "offline"
    assert "confidence" in enhancement.error and "None is not of type 'number'" in enhancement.error
    assert openai_fake.chat_requests() == 2


def test_nul_characters_from_a_model_are_removed_before_storing(tenant, post_webhook, openai_fake):
    # PostgreSQL's jsonb refuses \u0000: before, the row could not be saved and the enhancement was retried.
    openai_fake.set_response(
        '{"summary": "VPN\\u0000 drops", "probable_causes": ["a\\u0000"], "suggested_steps": ["Restart"], '
        '"related_tickets": [], "category_suggestion": "Network", "priority_suggestion": "High", '
        '"confidence": 0.5, "urgency": {"business_impact": false, "frustration": false, "evidence": ""}}'
    )
    enhancement = _process(post_webhook, tenant, "1")
    assert (enhancement.provider, enhancement.error) == ("openai", "")
    assert enhancement.output["summary"] == "VPN drops"
    assert enhancement.output["probable_causes"] == ["a"]


def test_every_mode_reserves_from_the_shared_budget(tenant, post_webhook, openai_fake, settings):
    # One request a minute: the first probe takes it; the step down waits for the budget, not past it.
    settings.LLM_REQUESTS_PER_MINUTE, settings.LLM_BUDGET_MAX_WAIT = 1, 0
    openai_fake.set_kind("old-gateway")
    enhancement = _process(post_webhook, tenant, "1")
    assert enhancement.status == Enhancement.Status.QUEUED and "LLM budget" in enhancement.error
    assert openai_fake.chat_requests() == 1


def test_the_mode_is_shared_with_a_ttl_and_forgetting_probes_again(tenant, post_webhook, openai_fake, settings):
    openai_fake.set_kind("vllm")
    _process(post_webhook, tenant, "1")
    assert _remembered() == "json_object"
    if settings.REDIS_URL:
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL)
        ttl = client.ttl(_mode_key(settings.OPENAI_BASE_URL, "fake-model", OUTPUT_SCHEMA))
        assert 0 < ttl <= MODE_TTL
    # Another model on the same server is negotiated on its own.
    assert mode_remembered(base_url=settings.OPENAI_BASE_URL, model="other-model", schema=OUTPUT_SCHEMA) is None
    # An upgraded server (or an operator clearing the memory) is probed from the top again.
    modes_forget()
    openai_fake.set_kind("openai")
    _process(post_webhook, tenant, "2")
    assert _modes(openai_fake)[-1] == "json_schema" and _remembered() == "json_schema"


def test_a_remembered_mode_the_server_stopped_supporting_steps_down_from_there(tenant, post_webhook, openai_fake):
    url = django_settings.OPENAI_BASE_URL
    mode_remember(base_url=url, model="fake-model", schema=OUTPUT_SCHEMA, mode="json_object")
    openai_fake.set_kind("lmstudio")
    enhancement = _process(post_webhook, tenant, "1")
    assert enhancement.provider == "openai"
    assert _modes(openai_fake) == ["json_object", "prompt"]
    assert _remembered() == "prompt"


# --- triage -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", [*KINDS, "nan"])
def test_triage_works_on_each_kind_of_server(northwind, post_webhook, openai_fake, kind):
    openai_fake.set_kind(kind)
    enhancement = webhook_enhancement(post_webhook, northwind)
    result = triage_suggest(tenant=northwind.tenant, ticket=enhancement.ticket, use_llm=True)
    if kind == "nan":
        assert result.provider == "offline" and "confidence" in result.fallback_reason
        return
    assert (result.provider, result.fallback_reason) == ("openai", "")
    assert result.suggestions["category"].value in choices_for(tenant=northwind.tenant).names["category"]
    assert 0 <= result.suggestions["category"].confidence <= 1
    assert _remembered(triage_schema(choices_for(tenant=northwind.tenant))) == KINDS[kind][0]


def test_triage_spends_from_the_shared_budget(northwind, post_webhook, openai_fake, settings):
    # Before, the triage call bypassed the budget: with one request a minute it still reached the provider.
    settings.LLM_REQUESTS_PER_MINUTE, settings.LLM_BUDGET_MAX_WAIT = 1, 0
    enhancement = webhook_enhancement(post_webhook, northwind)
    first = triage_suggest(tenant=northwind.tenant, ticket=enhancement.ticket, use_llm=True)
    second = triage_suggest(tenant=northwind.tenant, ticket=enhancement.ticket, use_llm=True)
    assert first.provider == "openai"
    assert second.provider == "offline" and "LLM budget" in second.fallback_reason
    assert openai_fake.chat_requests() == 1
