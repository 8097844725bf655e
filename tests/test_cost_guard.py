"""The daily AI cost guard per tenant (denial of wallet): the boundary, the cost cap, the lift, the dashboard."""

from __future__ import annotations

import json
import threading
from decimal import Decimal

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection

from enhancements import tasks
from enhancements.models import Enhancement
from enhancements.triage.models import SdpChoice, TriageDecision
from tests.fakes.fixtures import servicedesk_fixture
from tests.test_settings import manage
from tickets.ai_budget import llm_budget_check, llm_budget_fetch, llm_budget_lift, llm_cost_estimate, llm_usage_record
from tickets.models import LlmUsage, Tenant
from tickets.services import ticket_upsert

pytestmark = pytest.mark.django_db

CREATED = servicedesk_fixture("webhook__request_created")


def _enhance(post_webhook, result, sdp_id: str) -> Enhancement:
    payload = json.loads(json.dumps(CREATED))
    payload["request"]["id"] = sdp_id
    response = post_webhook(result.tenant.slug, payload, secret=result.secret)
    assert response.status_code == 202, response.content
    tasks.process_enhancement(response.json()["enhancement_id"])
    return Enhancement.objects.get(pk=response.json()["enhancement_id"])


def _chat_calls(llm) -> int:
    return sum(1 for r in llm.requests_log if r.path.endswith("/chat/completions"))


def _usage(tenant: Tenant) -> LlmUsage:
    return LlmUsage.objects.get(tenant=tenant)


@pytest.fixture
def budgeted(make_tenant, openai_fake):
    """A dry-run tenant with a 1000-token daily budget and a cached SDP priority list (so triage asks the LLM)."""
    result = make_tenant("acme", llm_daily_token_budget=1000)
    for n, name in enumerate(("Low", "Medium", "High"), 1):
        SdpChoice.objects.create(tenant=result.tenant, kind="priority", sdp_id=str(n), name=name)
    fields = {"subject": CREATED["request"]["subject"], "description": "Same problem as before.", "priority": "High",
              "resolution": "Fixed it.", "status": "Resolved", "is_resolved": True}  # fmt: skip
    ticket_upsert(tenant=result.tenant, sdp_id="100", fields=fields, source="import")
    return result


def test_the_boundary_below_crossing_past_and_lifted(budgeted, post_webhook, openai_fake):
    tenant = budgeted.tenant
    llm_usage_record(tenant=tenant, model="fake-model", prompt_tokens=999, completion_tokens=0)

    # Just below the budget: the LLM writes the note, and its reported tokens are counted (the call crosses).
    first = _enhance(post_webhook, budgeted, "7001")
    assert (first.provider, first.over_budget) == ("openai", False)
    assert _chat_calls(openai_fake) == 1  # the triage call came after the crossing: it used the neighbour vote
    crossed = _usage(tenant)
    assert crossed.tokens == 999 + first.prompt_tokens + first.completion_tokens > 1000
    assert crossed.calls == 2
    decision = TriageDecision.objects.get(enhancement=first, field="priority")
    assert decision.provider == "offline" and "AI budget for today reached" in decision.reason

    # Past it: no call at all; the note says so plainly, and the row records it.
    second = _enhance(post_webhook, budgeted, "7002")
    assert _chat_calls(openai_fake) == 1
    assert (second.provider, second.over_budget) == ("offline", True)
    assert "AI budget for today reached; this note was written offline." in second.note_html
    assert "AI budget" in second.output["budget_reached"] and "1000 tokens" in second.output["budget_reached"]
    assert _usage(tenant).tokens == crossed.tokens

    # An operator lifts today's budget: the LLM writes notes (and triage) again.
    state = llm_budget_lift(tenant=tenant, by="ops@msp.example", tokens=100_000)
    assert state.token_budget == 101_000 and not state.exhausted
    third = _enhance(post_webhook, budgeted, "7003")
    assert (third.provider, third.over_budget) == ("openai", False)
    assert _chat_calls(openai_fake) == 3  # the note and the triage
    assert TriageDecision.objects.get(enhancement=third, field="priority").provider == "openai"
    row = _usage(tenant)
    assert (row.calls, row.lifted_by, row.extra_tokens) == (4, "ops@msp.example", 100_000)
    assert row.lifted_at is not None


def test_exactly_at_the_budget_is_past_it(make_tenant):
    tenant = make_tenant("acme", llm_daily_token_budget=1000).tenant
    llm_usage_record(tenant=tenant, model="m", prompt_tokens=600, completion_tokens=399)
    assert llm_budget_check(tenant=tenant) == ""
    llm_usage_record(tenant=tenant, model="m", prompt_tokens=0, completion_tokens=1)
    assert "1000 of 1000 tokens" in llm_budget_check(tenant=tenant)


def test_zero_is_unlimited_and_empty_is_the_default(make_tenant, settings):
    settings.LLM_DAILY_TOKEN_BUDGET = 50
    default = make_tenant("acme").tenant
    unlimited = make_tenant("beta", llm_daily_token_budget=0).tenant
    for tenant in (default, unlimited):
        llm_usage_record(tenant=tenant, model="m", prompt_tokens=10_000, completion_tokens=0)
    assert "10000 of 50 tokens" in llm_budget_check(tenant=default)
    assert llm_budget_check(tenant=unlimited) == ""
    # Clearing the tenant's own value ("default") brings back the deployment's.
    make_tenant("beta", llm_daily_token_budget="default")
    assert llm_budget_check(tenant=Tenant.objects.get(slug="beta"))


def test_the_cost_cap_from_the_price_per_model(budgeted, post_webhook, openai_fake, settings):
    settings.LLM_PRICES = {"fake-model": (Decimal("1000"), Decimal("2000")), "*": (Decimal("1"), Decimal("1"))}
    Tenant.objects.filter(pk=budgeted.tenant.pk).update(llm_daily_token_budget=0, llm_daily_cost_cap=Decimal("0.01"))
    assert llm_cost_estimate(model="fake-model", prompt_tokens=10, completion_tokens=1) == 12_000
    assert llm_cost_estimate(model="other", prompt_tokens=10, completion_tokens=1) == 11
    first = _enhance(post_webhook, budgeted, "7101")
    assert first.provider == "openai"
    expected = 1000 * first.prompt_tokens + 2000 * first.completion_tokens
    assert _usage(budgeted.tenant).cost_micros == expected > 10_000
    second = _enhance(post_webhook, budgeted, "7102")
    assert second.over_budget and "estimated cost" in second.output["budget_reached"]


def test_the_note_says_it_in_the_note_language(budgeted, post_webhook):
    Tenant.objects.filter(pk=budgeted.tenant.pk).update(note_language="de")
    llm_usage_record(tenant=budgeted.tenant, model="fake-model", prompt_tokens=5000, completion_tokens=0)
    enhancement = _enhance(post_webhook, budgeted, "7201")
    assert "KI-Budget für heute erreicht; diese Notiz wurde offline erstellt." in enhancement.note_html


def test_usage_is_counted_exactly_under_concurrency(transactional_db, make_tenant):
    tenant = make_tenant("acme").tenant
    errors: list[BaseException] = []

    def spend() -> None:
        try:
            for _ in range(20):
                llm_usage_record(tenant=tenant, model="m", prompt_tokens=3, completion_tokens=2)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=spend) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    row = _usage(tenant)
    assert (row.calls, row.prompt_tokens, row.completion_tokens, row.tokens) == (120, 360, 240, 600)


def test_operator_lifts_in_the_admin_and_it_is_audited(admin_client, budgeted):
    tenant = budgeted.tenant
    llm_usage_record(tenant=tenant, model="fake-model", prompt_tokens=1500, completion_tokens=0)
    page = admin_client.get("/admin/enhancements/enhancement/dashboard/")
    assert page.status_code == 200
    table = page.content.decode().split('id="te-budget"')[1].split("</table>")[0]
    assert "1500" in table and "1000" in table and "reached: notes written offline" in table

    answer = admin_client.post(f"/admin/tickets/tenant/{tenant.pk}/lift-budget/")
    assert answer.status_code == 302
    state = llm_budget_fetch(tenant=tenant)
    assert state.token_budget == 2000 and not state.exhausted and state.lifted_by == "admin"
    entry = LogEntry.objects.get(object_id=str(tenant.pk))
    assert "Lifted today's AI budget" in entry.get_change_message() and entry.user.get_username() == "admin"
    # The bulk action does the same, and a GET never lifts.
    admin_client.post(
        "/admin/tickets/tenant/", {"action": "lift_budget_selected", "_selected_action": [tenant.pk]}, follow=True
    )
    assert llm_budget_fetch(tenant=tenant).token_budget == 3000
    assert admin_client.get(f"/admin/tickets/tenant/{tenant.pk}/lift-budget/").status_code == 403
    change = admin_client.get(f"/admin/tickets/tenant/{tenant.pk}/change/").content.decode()
    assert "1,500 of 3,000 tokens" in change and "lifted by admin" in change
    history = admin_client.get("/admin/tickets/llmusage/").content.decode()
    assert "1500" in history and "admin" in history


def test_support_lead_without_change_permission_cannot_lift(client, budgeted):
    user = get_user_model().objects.create_user("lead", password="x", is_staff=True)
    client.force_login(user)
    assert client.post(f"/admin/tickets/tenant/{budgeted.tenant.pk}/lift-budget/").status_code in (302, 403)
    assert llm_budget_fetch(tenant=budgeted.tenant).token_budget == 1000


def test_the_command_lifts_and_shows(budgeted, capsys):
    call_command("llm_budget_lift", "acme", "--tokens", "500", "--by", "night shift")
    state = llm_budget_fetch(tenant=budgeted.tenant)
    assert (state.token_budget, state.lifted_by) == (1500, "night shift")
    call_command("llm_budget_lift", "acme", "--show")
    assert "0 of 1,500 tokens" in capsys.readouterr().out
    with pytest.raises(Exception, match="cannot be negative"):
        call_command("llm_budget_lift", "acme", "--tokens", "-5")


def test_lifting_an_unlimited_budget_says_there_is_nothing_to_lift_and_records_nothing(
    admin_client, make_tenant, capsys
):
    # Before: "lifted" in the log, the command's output and the usage row (lifted_by), for a budget with no limit.
    tenant = make_tenant("acme", llm_daily_token_budget=0).tenant
    answer = admin_client.post(f"/admin/tickets/tenant/{tenant.pk}/lift-budget/", follow=True)
    assert answer.status_code == 200
    assert any("unlimited; nothing to lift" in str(m) for m in answer.context["messages"])
    call_command("llm_budget_lift", "acme", "--by", "night shift")
    out = capsys.readouterr().out
    assert "unlimited; nothing to lift" in out and "lifted." not in out
    assert not LlmUsage.objects.filter(tenant=tenant).exists()
    assert not LogEntry.objects.filter(object_id=str(tenant.pk)).exists()
    state = llm_budget_fetch(tenant=tenant)
    assert (state.token_budget, state.cost_cap_micros, state.lifted_at) == (0, 0, None)


def test_malformed_budget_settings_fail_loudly():
    done = manage("check", LLM_PRICES="gpt-4o-mini=cheap")
    assert done.returncode != 0 and "LLM_PRICES" in done.stderr
    done = manage("check", LLM_BUDGET_TIMEZONE="Mars/Olympus")
    assert done.returncode != 0 and "LLM_BUDGET_TIMEZONE" in done.stderr


# --- the provider's shared per-minute budget: waiting is not a failed attempt ---------------------------------
def test_waiting_for_the_shared_llm_budget_spends_no_attempt_and_ends_with_an_offline_note(
    make_tenant, post_webhook, openai_fake, settings
):
    from datetime import timedelta

    from django.utils import timezone

    settings.LLM_REQUESTS_PER_MINUTE = 1  # the first call takes the minute's only request
    settings.LLM_BUDGET_MAX_WAIT = 0
    settings.ENHANCEMENT_MAX_ATTEMPTS = 2
    result = make_tenant("acme")
    assert _enhance(post_webhook, result, "7301").provider == "openai"

    waiting = _enhance(post_webhook, result, "7302")
    for _ in range(settings.ENHANCEMENT_MAX_ATTEMPTS + 3):
        assert waiting.status == Enhancement.Status.QUEUED, waiting.error
        assert waiting.attempts == 0 and waiting.next_attempt_at > timezone.now()
        assert "not a failed attempt" in waiting.error
        Enhancement.objects.filter(pk=waiting.pk).update(next_attempt_at=timezone.now())
        tasks.process_enhancement(str(waiting.pk))
        waiting.refresh_from_db()
    assert _chat_calls(openai_fake) == 1

    # Bounded by its age: past LLM_BUDGET_MAX_DEFER the ticket still gets its note, written offline, saying why.
    old = timezone.now() - timedelta(seconds=settings.LLM_BUDGET_MAX_DEFER + 1)
    Enhancement.objects.filter(pk=waiting.pk).update(created_at=old, next_attempt_at=timezone.now())
    tasks.process_enhancement(str(waiting.pk))
    waiting.refresh_from_db()
    assert waiting.status == Enhancement.Status.COMPLETED and waiting.provider == "offline"
    assert "rate limit had no room for 60 min" in waiting.note_html
    assert "LLM_REQUESTS_PER_MINUTE" in waiting.error


@pytest.mark.parametrize(("max_defer", "said"), [(20, "20 s"), (150, "3 min")])
def test_the_deferral_note_says_a_short_wait_in_seconds_and_never_less_than_it_was(
    make_tenant, post_webhook, openai_fake, settings, max_defer, said
):
    # Before: round(20 / 60) said "0 min", and round(150 / 60) "2 min" for a wait of two and a half.
    from datetime import timedelta

    from django.utils import timezone

    settings.LLM_REQUESTS_PER_MINUTE, settings.LLM_BUDGET_MAX_WAIT = 1, 0
    settings.LLM_BUDGET_MAX_DEFER = max_defer
    result = make_tenant("acme")
    assert _enhance(post_webhook, result, "7401").provider == "openai"
    payload = json.loads(json.dumps(CREATED))
    payload["request"]["id"] = "7402"
    enhancement_id = post_webhook("acme", payload, secret=result.secret).json()["enhancement_id"]
    Enhancement.objects.filter(pk=enhancement_id).update(created_at=timezone.now() - timedelta(seconds=max_defer + 1))
    tasks.process_enhancement(enhancement_id)
    waiting = Enhancement.objects.get(pk=enhancement_id)
    assert (waiting.status, waiting.provider) == (Enhancement.Status.COMPLETED, "offline")
    assert f"rate limit had no room for {said}, so this note was written offline" in waiting.note_html
