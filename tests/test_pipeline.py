"""The worker's pipeline end to end in-process: webhook -> task -> context -> LLM -> note on the SDP fake."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.models import OrmQ, Schedule

from enhancements import tasks
from enhancements.models import Enhancement
from enhancements.services import enhancement_enqueue, enhancement_sweep
from tests.fakes.fixtures import servicedesk_fixture
from tickets.models import Asset, Ticket
from tickets.services import ticket_upsert

pytestmark = pytest.mark.django_db

CREATED = servicedesk_fixture("webhook__request_created")


def _history(tenant, sdp_id="98765", subject="Outlook password prompts loop after MFA change", **fields):
    fields = {
        "subject": subject,
        "description": "Outlook desktop keeps asking for the password after the MFA change. Webmail works.",
        "resolution": "Removed stale credentials from Windows Credential Manager and re-created the Outlook profile.",
        "status": "Resolved",
        "is_resolved": True,
        **fields,
    }
    return ticket_upsert(tenant=tenant, sdp_id=sdp_id, fields=fields, source="import")[0]


def _webhook(post_webhook, result, payload=CREATED, slug="acme"):
    response = post_webhook(slug, payload, secret=result.secret)
    assert response.status_code == 202, response.content
    return Enhancement.objects.get(pk=response.json()["enhancement_id"])


def _run(enhancement) -> Enhancement:
    tasks.process_enhancement(str(enhancement.pk))
    enhancement.refresh_from_db()
    return enhancement


@pytest.fixture
def sdp_tenant(make_tenant, sdp):
    sdp.add_request(CREATED["request"])
    return make_tenant("acme", sdp_base_url=sdp.url, sdp_api_key=sdp.api_key)


def test_dry_run_tenant_completes_with_a_useful_offline_note(tenant, post_webhook):
    _history(tenant.tenant)
    _history(tenant.tenant, sdp_id="1", subject="Printer on floor 2 jams", description="Paper jam", resolution="x")
    Asset.objects.create(tenant=tenant.tenant, ip="10.20.4.57", hostname="lt-0457", role="Laptop", owner="Dana")
    enhancement = _run(_webhook(post_webhook, tenant))

    assert enhancement.status == Enhancement.Status.COMPLETED
    assert enhancement.finished_at and enhancement.attempts == 1
    assert (enhancement.provider, enhancement.model) == ("offline", "context-v1")
    assert set(enhancement.timings) >= {"load", "context", "generate", "render"}
    assert [t["sdp_id"] for t in enhancement.context["similar_tickets"]] == ["98765"]
    assert enhancement.context["assets"][0]["hostname"] == "lt-0457"
    assert enhancement.output["related_tickets"] == ["98765"]
    # The note carries the resolution that worked before, the asset, and the hidden marker.
    assert "Credential Manager" in enhancement.note_html
    assert "lt-0457" in enhancement.note_html
    assert f"<!-- ticket-enhancer:{enhancement.pk} -->" in enhancement.note_html


def test_tenant_with_credentials_gets_exactly_one_technician_note(sdp_tenant, sdp, post_webhook):
    enhancement = _run(_webhook(post_webhook, sdp_tenant))

    assert enhancement.status == Enhancement.Status.POSTED, enhancement.error
    notes = sdp.notes["104321"]
    assert len(notes) == 1
    note = notes[0]
    assert str(enhancement.pk) in note["description"]
    assert note["show_to_requester"] is False and note["notify_technician"] is False
    assert note["mark_first_response"] is False and note["add_to_linked_requests"] is False
    assert enhancement.sdp_note_id == str(note["id"])
    assert enhancement.posted_at and "post" in enhancement.timings
    post = [r for r in sdp.requests_log if r.method == "POST"][0]
    assert post.headers["authtoken"] == sdp.api_key
    assert post.headers["accept"] == "application/vnd.manageengine.sdp.v3+json"
    assert post.content_type == "application/x-www-form-urlencoded"
    assert json.loads(post.form["input_data"])["request_note"]["description"] == enhancement.note_html


def test_running_the_task_twice_posts_once(sdp_tenant, sdp, post_webhook):
    enhancement = _webhook(post_webhook, sdp_tenant)
    assert tasks.process_enhancement(str(enhancement.pk)) == "posted"
    assert tasks.process_enhancement(str(enhancement.pk)) == "skipped"
    assert len(sdp.notes["104321"]) == 1


def test_minimal_payload_fetches_the_request_from_sdp(sdp_tenant, sdp, post_webhook):
    sdp.add_request(servicedesk_fixture("api__get_request"))
    enhancement = _run(_webhook(post_webhook, sdp_tenant, servicedesk_fixture("webhook__request_created_minimal")))
    assert enhancement.status == Enhancement.Status.POSTED, enhancement.error
    ticket = Ticket.objects.get(sdp_id="104322")
    assert ticket.subject == "Shared drive S: not mapping for finance"
    assert "0x80070035" in ticket.description and ticket.requester_name == "Priya Nair"
    assert len(sdp.notes["104322"]) == 1


def test_minimal_payload_without_credentials_fails_with_a_clear_reason(tenant, post_webhook):
    enhancement = _run(_webhook(post_webhook, tenant, servicedesk_fixture("webhook__request_created_minimal")))
    assert enhancement.status == Enhancement.Status.FAILED
    assert "no SDP credentials" in enhancement.error


def test_review_required_holds_the_note(make_tenant, sdp, post_webhook):
    sdp.add_request(CREATED["request"])
    result = make_tenant("acme", sdp_base_url=sdp.url, sdp_api_key=sdp.api_key, review_required=True)
    enhancement = _run(_webhook(post_webhook, result))
    assert enhancement.status == Enhancement.Status.AWAITING_REVIEW
    assert enhancement.note_html and not sdp.notes


def test_sdp_500_on_post_is_retried_and_posted_once(sdp_tenant, sdp, post_webhook):
    sdp.fail_next(1, 500, method="POST")
    enhancement = _run(_webhook(post_webhook, sdp_tenant))
    assert enhancement.status == Enhancement.Status.QUEUED
    assert enhancement.next_attempt_at is not None and "server error" in enhancement.error
    enhancement.next_attempt_at = timezone.now()
    enhancement.save(update_fields=["next_attempt_at"])
    enhancement = _run(enhancement)
    assert enhancement.status == Enhancement.Status.POSTED and enhancement.attempts == 2
    assert len(sdp.notes["104321"]) == 1
    assert enhancement.error == ""


def test_post_that_timed_out_but_reached_sdp_is_not_posted_again(sdp_tenant, sdp, post_webhook, settings):
    settings.SDP_TIMEOUT = 0.5
    sdp.fail_next(1, "timeout", method="POST", delay=1.5, process=True)
    enhancement = _run(_webhook(post_webhook, sdp_tenant))
    assert enhancement.status == Enhancement.Status.QUEUED
    assert enhancement.post_started_at is not None
    Enhancement.objects.filter(pk=enhancement.pk).update(next_attempt_at=timezone.now())
    enhancement = _run(enhancement)
    assert enhancement.status == Enhancement.Status.POSTED
    assert len(sdp.notes["104321"]) == 1
    assert enhancement.sdp_note_id == str(sdp.notes["104321"][0]["id"])
    assert len([r for r in sdp.requests_log if r.method == "POST"]) == 1


def test_sdp_401_fails_permanently_with_a_clear_message(make_tenant, sdp, post_webhook):
    result = make_tenant("acme", sdp_base_url=sdp.url, sdp_api_key="wrong-key")
    enhancement = _run(_webhook(post_webhook, result))
    assert enhancement.status == Enhancement.Status.FAILED
    assert "credentials" in enhancement.error and "API key" in enhancement.error
    assert "wrong-key" not in enhancement.error
    assert not sdp.notes


def test_short_429_is_waited_out_inside_the_attempt(sdp_tenant, sdp, post_webhook):
    sdp.fail_next(1, 429, method="POST", retry_after=0.2)
    enhancement = _run(_webhook(post_webhook, sdp_tenant))
    assert enhancement.status == Enhancement.Status.POSTED
    assert len(sdp.notes["104321"]) == 1


def test_long_429_goes_back_to_the_queue_honouring_retry_after(sdp_tenant, sdp, post_webhook):
    sdp.fail_next(3, 429, method="POST", retry_after=120)
    before = timezone.now()
    enhancement = _run(_webhook(post_webhook, sdp_tenant))
    assert enhancement.status == Enhancement.Status.QUEUED
    assert enhancement.next_attempt_at >= before + timedelta(seconds=119)
    assert "throttling" in enhancement.error


def test_attempts_are_bounded(sdp_tenant, sdp, post_webhook, settings):
    settings.ENHANCEMENT_MAX_ATTEMPTS = 2
    sdp.fail_next(10, 503, method="POST")
    enhancement = _webhook(post_webhook, sdp_tenant)
    for _ in range(2):
        Enhancement.objects.filter(pk=enhancement.pk).update(next_attempt_at=timezone.now())
        enhancement = _run(enhancement)
    assert enhancement.status == Enhancement.Status.FAILED
    assert enhancement.error.startswith("Gave up after 2 attempts")
    assert not sdp.notes


def test_note_key_fallback_for_builds_that_want_note(make_tenant, post_webhook):
    from tests.fakes.sdp import FakeServiceDesk

    with FakeServiceDesk(auth="authtoken", api_key="k", note_key="note") as fake:
        fake.add_request(CREATED["request"])
        result = make_tenant("acme", sdp_base_url=fake.url, sdp_api_key="k")
        enhancement = _run(_webhook(post_webhook, result))
        assert enhancement.status == Enhancement.Status.POSTED, enhancement.error
        assert len(fake.notes["104321"]) == 1


def test_cloud_tenant_uses_zoho_oauth_header(make_tenant, post_webhook):
    from tests.fakes.sdp import FakeServiceDesk

    with FakeServiceDesk(auth="zoho_oauth", api_key="oauth-token", portal="itdesk") as fake:
        fake.add_request(CREATED["request"])
        result = make_tenant("acme", sdp_base_url=fake.url, sdp_api_key="oauth-token", sdp_auth_type="zoho_oauth")
        enhancement = _run(_webhook(post_webhook, result))
        assert enhancement.status == Enhancement.Status.POSTED, enhancement.error
        assert fake.requests_log[-1].headers["authorization"] == "Zoho-oauthtoken oauth-token"
        _history(result.tenant)
        # Links in the note point at the cloud portal's request page.
        rerun = Enhancement.objects.create(tenant=result.tenant, ticket=enhancement.ticket, trigger="rerun")
        rerun = _run(rerun)
        assert f"{fake.url}/ui/requests/98765/details" in rerun.note_html


def test_sweep_reenqueues_lost_and_stuck_rows(tenant, post_webhook, settings):
    settings.ENHANCEMENT_STUCK_AFTER = 60
    lost = _webhook(post_webhook, tenant)
    Enhancement.objects.filter(pk=lost.pk).update(enqueued_at=timezone.now() - timedelta(seconds=120))
    stuck = _webhook(post_webhook, tenant, {"request": {"id": "2", "subject": "VPN down"}})
    Enhancement.objects.filter(pk=stuck.pk).update(
        status="running", started_at=timezone.now() - timedelta(seconds=120), attempts=1
    )
    fresh = _webhook(post_webhook, tenant, {"request": {"id": "3", "subject": "Printer"}})
    OrmQ.objects.all().delete()

    assert enhancement_sweep() == {"recovered": 1, "enqueued": 2}
    queued_ids = {task.task["args"][0] for task in OrmQ.objects.all()} if not settings.REDIS_URL else None
    if queued_ids is not None:
        assert queued_ids == {str(lost.pk), str(stuck.pk)}
    assert _run(Enhancement.objects.get(pk=stuck.pk)).status == "completed"
    assert _run(Enhancement.objects.get(pk=lost.pk)).status == "completed"
    assert Enhancement.objects.get(pk=fresh.pk).status == "queued"
    # Nothing else is due: a second sweep enqueues nothing.
    assert enhancement_sweep() == {"recovered": 0, "enqueued": 0}


def test_sweep_fails_a_stuck_row_on_its_last_attempt(tenant, post_webhook, settings):
    settings.ENHANCEMENT_STUCK_AFTER = 60
    settings.ENHANCEMENT_MAX_ATTEMPTS = 1
    stuck = _webhook(post_webhook, tenant)
    Enhancement.objects.filter(pk=stuck.pk).update(
        status="running", started_at=timezone.now() - timedelta(seconds=120), attempts=1
    )
    enhancement_sweep()
    stuck.refresh_from_db()
    assert stuck.status == "failed" and "stopped responding" in stuck.error


def test_sweep_schedule_exists_every_minute():
    schedule = Schedule.objects.get(name="enhancements-sweep")
    assert (schedule.func, schedule.schedule_type, schedule.minutes, schedule.repeats) == (
        "enhancements.tasks.sweep",
        Schedule.MINUTES,
        1,
        -1,
    )


# --- the OpenAI-compatible provider ----------------------------------------------------------
def test_openai_provider_records_model_and_tokens(tenant, post_webhook, openai_fake):
    _history(tenant.tenant)
    payload = json.loads(json.dumps(CREATED))
    payload["request"]["description"] += " Reach me at dana.whitfield@example.com or +44 20 7946 0958."
    enhancement = _run(_webhook(post_webhook, tenant, payload))
    assert enhancement.status == Enhancement.Status.COMPLETED
    assert (enhancement.provider, enhancement.model) == ("openai", "fake-model")
    assert enhancement.prompt_tokens and enhancement.completion_tokens
    request = openai_fake.requests_log[-1].json
    assert request["response_format"]["json_schema"]["strict"] is True
    prompt = request["messages"][1]["content"]
    # Ticket text is delimited data, and personal data is redacted before it leaves.
    assert prompt.startswith("<ticket>") and "</ticket>" in prompt
    assert "dana.whitfield@example.com" not in prompt and "[EMAIL]" in prompt
    assert "7946" not in prompt and "[PHONE]" in prompt
    assert set(enhancement.output["related_tickets"]) <= {"98765"}
    assert "openai / fake-model" in enhancement.note_html


def test_openai_related_tickets_outside_the_context_are_dropped(tenant, post_webhook, openai_fake):
    _history(tenant.tenant)
    openai_fake.set_response(
        {
            "summary": "s",
            "probable_causes": ["c"],
            "suggested_steps": ["x"],
            "related_tickets": ["98765", "424242"],
            "category_suggestion": "Email",
            "priority_suggestion": "High",
            "confidence": 0.7,
            "urgency": {"business_impact": False, "frustration": False, "evidence": ""},
        }
    )
    enhancement = _run(_webhook(post_webhook, tenant))
    assert enhancement.provider == "openai"
    assert enhancement.output["related_tickets"] == ["98765"]


def test_bad_llm_output_is_retried_once_then_the_offline_note_is_used(tenant, post_webhook, openai_fake):
    # Twice no JSON at all under json_schema steps down to the next mode instead (tests/test_llm_structured.py).
    _history(tenant.tenant)
    openai_fake.fail_next(2, "schema_violation")
    enhancement = _run(_webhook(post_webhook, tenant))
    assert len(openai_fake.requests_log) == 2
    assert enhancement.status == Enhancement.Status.COMPLETED
    assert enhancement.provider == "offline"
    assert "offline fallback" in enhancement.note_html
    assert enhancement.error.startswith("LLM unavailable")


def test_bad_llm_output_once_then_good_output_is_used(tenant, post_webhook, openai_fake):
    openai_fake.fail_next(1, "invalid_json")
    enhancement = _run(_webhook(post_webhook, tenant))
    assert enhancement.provider == "openai" and len(openai_fake.requests_log) == 2


@pytest.mark.parametrize("status", [500, 429])
def test_llm_errors_are_retried_then_fall_back(tenant, post_webhook, openai_fake, status):
    openai_fake.fail_next(3, status, retry_after=0 if status == 429 else None)
    enhancement = _run(_webhook(post_webhook, tenant))
    # The openai client retries twice (three calls), then the labelled offline note is used.
    assert len(openai_fake.requests_log) == 3
    assert enhancement.provider == "offline" and enhancement.status == "completed"
    assert "offline fallback" in enhancement.note_html


def test_llm_timeout_falls_back(tenant, post_webhook, openai_fake, settings):
    settings.LLM_TIMEOUT = 0.3
    openai_fake.fail_next(3, "timeout", delay=1.0)
    enhancement = _run(_webhook(post_webhook, tenant))
    assert enhancement.provider == "offline" and enhancement.status == "completed"


def test_the_enqueued_package_is_the_one_async_task_pushes():
    """The webhook pushes the task without django_q's async_task; the cluster must read the same package."""
    from django_q.signing import SignedPackage
    from django_q.tasks import async_task

    from enhancements.services.pipeline import _PUSHER, TASK_PROCESS, _broker

    _PUSHER.stop()  # an earlier test's webhook task, still on the pusher thread, must not land in this queue
    broker = _broker()
    broker.delete_queue()

    def pushed() -> dict:
        ((_, package),) = broker.dequeue()
        broker.delete_queue()
        return SignedPackage.loads(package)

    assert enhancement_enqueue(enhancement_id="0b0e7c9e-0000-4000-8000-000000000001") is True
    ours = pushed()
    async_task(TASK_PROCESS, "0b0e7c9e-0000-4000-8000-000000000001", task_name=ours["name"], broker=broker)
    theirs = pushed()

    assert ours.keys() == theirs.keys()
    assert {k: v for k, v in ours.items() if k not in {"id", "started"}} == {
        k: v for k, v in theirs.items() if k not in {"id", "started"}
    }
    assert ours["name"] == "enhance-0b0e7c9e-0000-4000-8000-000000000001"
    assert re.fullmatch(r"[0-9a-f]{32}", ours["id"]) and re.fullmatch(r"[0-9a-f]{32}", theirs["id"])
    assert type(ours["started"]) is type(theirs["started"]) and ours["started"].tzinfo is not None
    assert abs(theirs["started"] - ours["started"]) < timedelta(seconds=60)
