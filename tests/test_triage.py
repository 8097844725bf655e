"""Triage that acts: every rule, against the SDP fake over real HTTP, on the tenant's real history and search."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from enhancements.models import Enhancement
from enhancements.triage import tasks
from enhancements.triage.choices import choices_for, choices_refresh
from enhancements.triage.models import SdpChoice, TriageCalibration, TriageDecision, TriageMode, TriageSetting
from enhancements.triage.services import (
    triage_decide,
    triage_setting_update,
    triage_sweep,
    triage_undo,
)
from tests.fakes.sdp import FakeServiceDesk
from tests.triage_helpers import (
    DATA,
    NEW_REQUEST,
    decisions_of,
    group_written_over_default,
    modes_set,
    puts_to,
    webhook_enhancement,
)

pytestmark = pytest.mark.django_db

Outcome = TriageDecision.Outcome


# --- choices --------------------------------------------------------------------------------------------------
def test_sdp_lists_are_fetched_cached_and_refreshed_keeping_lead_descriptions(northwind):
    tenant, sdp = northwind.tenant, northwind.sdp
    cached = choices_for(tenant=tenant)
    assert cached.names["category"] == set(DATA["choices"]["subcategory"])
    assert cached.subcategories_of["Network"] == {"VPN", "Wi-Fi", "Firewall", "Internet"}
    assert cached.names["priority"] == {"Low", "Medium", "High", "Urgent"}
    assert "NET" in cached.names["group"] and "Tom Becker" in cached.names["technician"]
    assert cached.technician_groups["Tom Becker"] == {"NET"}
    # Every list was read through the v3 list endpoints, subcategories per category.
    paths = {r.path for r in sdp.requests_log if r.method == "GET"}
    assert {"/api/v3/categories", "/api/v3/subcategories", "/api/v3/priorities", "/api/v3/support_groups"} <= paths

    SdpChoice.objects.filter(tenant=tenant, kind="group", name="NET").update(description="network team, VPN")
    sdp.set_choices(groups={"M365": "", "DESK": ""})  # NET was removed in SDP
    result = choices_refresh(tenant=tenant)
    assert result.deactivated >= 1
    net = SdpChoice.objects.get(tenant=tenant, kind="group", name="NET")
    assert (net.active, net.description) == (False, "network team, VPN")
    assert "NET" not in choices_for(tenant=tenant).names["group"]


def test_groups_come_from_the_older_groups_endpoint_when_support_groups_is_missing(make_tenant):
    with FakeServiceDesk(api_key="k", groups_path="groups") as sdp:
        tenant = make_tenant("old", sdp_base_url=sdp.url, sdp_api_key="k").tenant
        sdp.set_choices(categories={"Network": ["VPN"]}, priorities=["Low"], groups=["NET"], technicians=[])
        choices_refresh(tenant=tenant)
    assert choices_for(tenant=tenant).names["group"] == {"NET"}


def test_refresh_command_and_schedules(northwind, capsys):
    from django_q.models import Schedule

    call_command("refresh_sdp_lists", "northwind")
    assert "Fetched" in capsys.readouterr().out
    schedules = dict(Schedule.objects.values_list("name", "func"))
    assert schedules["triage-refresh-sdp-lists"] == "enhancements.triage.tasks.refresh_choices"
    assert schedules["triage-sweep"] == "enhancements.triage.tasks.sweep"


# --- modes and thresholds -------------------------------------------------------------------------------------
def test_default_is_suggest_everything_recorded_nothing_written(northwind, post_webhook):
    enhancement = webhook_enhancement(post_webhook, northwind)
    decisions = {d.field: d for d in triage_decide(enhancement=enhancement)}

    assert set(decisions) == {"category", "priority", "group", "technician"}
    assert decisions["category"].value == "Network" and decisions["category"].subvalue == "VPN"
    assert decisions["group"].value == "NET"
    assert all(d.outcome == Outcome.SUGGESTED and d.mode == TriageMode.SUGGEST for d in decisions.values())
    assert all(0 < d.confidence <= 1 for d in decisions.values())
    tasks.apply_decisions(str(enhancement.pk))
    assert puts_to(northwind.sdp) == []


def test_off_field_gets_no_decision(northwind, post_webhook):
    triage_setting_update(tenant=northwind.tenant, field="technician", mode=TriageMode.OFF)
    enhancement = webhook_enhancement(post_webhook, northwind)
    assert "technician" not in {d.field for d in triage_decide(enhancement=enhancement)}


def test_apply_writes_empty_fields_in_one_put_with_an_update_reason(northwind, post_webhook):
    tenant, sdp = northwind.tenant, northwind.sdp
    modes_set(tenant, technician=TriageMode.SUGGEST)
    triage_setting_update(tenant=tenant, field="priority", mode=TriageMode.SUGGEST)
    enhancement = webhook_enhancement(post_webhook, northwind)
    triage_decide(enhancement=enhancement)
    assert {d.field: d.outcome for d in decisions_of(enhancement).values()} == {
        "category": Outcome.PENDING, "group": Outcome.PENDING,
        "priority": Outcome.SUGGESTED, "technician": Outcome.SUGGESTED,
    }  # fmt: skip

    tasks.apply_decisions(str(enhancement.pk))

    stored = sdp.requests["555001"]
    assert stored["group"]["name"] == "NET"
    assert (stored["category"]["name"], stored["subcategory"]["name"]) == ("Network", "VPN")
    assert stored["priority"] == {"name": "Medium"}  # suggest mode: untouched
    assert "technician" not in stored
    assert len(puts_to(sdp)) == 1
    (update,) = sdp.updates["555001"]
    assert "Ticket Enhancer" in update["update_reason"] and str(enhancement.pk) in update["update_reason"]
    decisions = decisions_of(enhancement)
    assert decisions["group"].outcome == Outcome.APPLIED and decisions["group"].previous_value == ""
    assert decisions["group"].written_at and decisions["group"].write_started_at
    assert "threshold" in decisions["group"].reason


def test_below_threshold_is_not_written(northwind, post_webhook):
    modes_set(northwind.tenant, threshold=1.0)
    enhancement = webhook_enhancement(post_webhook, northwind)
    decisions = triage_decide(enhancement=enhancement)
    assert {d.outcome for d in decisions} == {Outcome.LOW_CONFIDENCE}
    assert "below the threshold" in decisions[0].reason
    tasks.apply_decisions(str(enhancement.pk))
    assert puts_to(northwind.sdp) == []


def test_uncalibrated_tenant_never_writes_offline_suggestions(northwind, post_webhook):
    TriageCalibration.objects.filter(tenant=northwind.tenant).delete()
    modes_set(northwind.tenant, threshold=0.0)
    enhancement = webhook_enhancement(post_webhook, northwind)
    decisions = triage_decide(enhancement=enhancement)
    assert {d.outcome for d in decisions} == {Outcome.LOW_CONFIDENCE}
    assert "triage_report" in decisions[0].reason


def test_a_value_outside_the_sdp_list_is_never_written(northwind, post_webhook):
    tenant, sdp = northwind.tenant, northwind.sdp
    modes_set(tenant)
    # SDP no longer lists NET: the vote may not pick it, and nothing outside the list is written.
    groups = {k: v for k, v in DATA["choices"]["group"].items() if k != "NET"}
    sdp.set_choices(groups=groups)
    choices_refresh(tenant=tenant)
    enhancement = webhook_enhancement(post_webhook, northwind)
    decisions = {d.field: d for d in triage_decide(enhancement=enhancement)}
    assert decisions.get("group") is None or decisions["group"].value != "NET"
    tasks.apply_decisions(str(enhancement.pk))
    assert sdp.requests["555001"].get("group", {}).get("name") != "NET"


def test_sdp_refusing_a_value_fails_the_write_permanently(northwind, post_webhook):
    tenant, sdp = northwind.tenant, northwind.sdp
    modes_set(tenant, category=TriageMode.OFF, priority=TriageMode.OFF, technician=TriageMode.OFF)
    enhancement = webhook_enhancement(post_webhook, northwind)
    triage_decide(enhancement=enhancement)
    # Between our cache refresh and the write, SDP dropped the group: SDP answers 400 naming the field.
    sdp.set_choices(groups={"M365": ""})
    tasks.apply_decisions(str(enhancement.pk))
    decision = decisions_of(enhancement)["group"]
    assert decision.outcome == Outcome.FAILED
    assert "group" in decision.reason and "Invalid value" in decision.reason
    assert "group" not in sdp.requests["555001"]


# --- never overwrite a person ---------------------------------------------------------------------------------
def test_a_field_a_person_set_before_the_webhook_is_left_alone(northwind, post_webhook):
    modes_set(northwind.tenant)
    request = dict(NEW_REQUEST, group={"name": "DESK"})
    northwind.sdp.add_request(request)
    enhancement = webhook_enhancement(post_webhook, northwind, request)
    decision = {d.field: d for d in triage_decide(enhancement=enhancement)}["group"]
    assert decision.outcome == Outcome.HUMAN_SET and decision.seen_value == "DESK"


def test_a_human_change_racing_our_write_wins(northwind, post_webhook):
    tenant, sdp = northwind.tenant, northwind.sdp
    modes_set(tenant, priority=TriageMode.OFF, technician=TriageMode.OFF)
    enhancement = webhook_enhancement(post_webhook, northwind)
    triage_decide(enhancement=enhancement)
    # A technician routes the ticket in SDP after we decided and before the write task runs.
    sdp.edit_request("555001", group="M365")
    tasks.apply_decisions(str(enhancement.pk))

    stored = sdp.requests["555001"]
    assert stored["group"] == {"name": "M365"}
    decisions = decisions_of(enhancement)
    assert decisions["group"].outcome == Outcome.HUMAN_SET and decisions["group"].previous_value == "M365"
    assert decisions["category"].outcome == Outcome.APPLIED  # the field nobody touched is still written
    (put,) = puts_to(sdp)
    assert "group" not in put.form["input_data"]


def test_the_tenant_default_counts_as_unset(northwind, post_webhook):
    tenant, sdp = northwind.tenant, northwind.sdp
    modes_set(tenant, category=TriageMode.OFF, group=TriageMode.OFF, technician=TriageMode.OFF, threshold=0.0)
    # "Medium" is what SDP gives every new request here: without the default it counts as a person's choice.
    enhancement = webhook_enhancement(post_webhook, northwind)
    assert triage_decide(enhancement=enhancement)[0].outcome == Outcome.HUMAN_SET

    triage_setting_update(tenant=tenant, field="priority", default_value="Medium")
    assert triage_decide(enhancement=enhancement)[0].outcome == Outcome.PENDING
    tasks.apply_decisions(str(enhancement.pk))
    decision = decisions_of(enhancement)["priority"]
    assert decision.outcome == Outcome.APPLIED and decision.previous_value == "Medium"
    assert sdp.requests["555001"]["priority"]["name"] == decision.value


# --- exactly once ---------------------------------------------------------------------------------------------
def test_a_write_that_timed_out_but_landed_is_not_sent_again(northwind, post_webhook, settings):
    tenant, sdp = northwind.tenant, northwind.sdp
    settings.SDP_TIMEOUT = 0.5
    modes_set(tenant, priority=TriageMode.OFF, technician=TriageMode.OFF)
    enhancement = webhook_enhancement(post_webhook, northwind)
    triage_decide(enhancement=enhancement)
    sdp.fail_next(status="timeout", method="PUT", delay=1.5, process=True)

    result = tasks.apply_decisions(str(enhancement.pk))
    assert result == {"retry": 2}
    decision = decisions_of(enhancement)["group"]
    assert decision.outcome == Outcome.PENDING and decision.write_started_at
    assert "will retry" in decision.reason

    TriageDecision.objects.filter(enhancement=enhancement).update(next_attempt_at=None)
    TriageDecision.objects.filter(enhancement=enhancement).update(created_at=decision.created_at.replace(year=2020))
    assert triage_sweep() == 1
    decisions = decisions_of(enhancement)
    assert {d.outcome for d in decisions.values()} == {Outcome.APPLIED}
    assert len(puts_to(sdp)) == 1  # the second attempt read SDP, found our value and did not write again
    assert decisions["group"].previous_value == ""


def test_a_person_changing_the_field_during_an_unclear_write_wins(northwind, post_webhook, settings):
    tenant, sdp = northwind.tenant, northwind.sdp
    settings.SDP_TIMEOUT = 0.5
    modes_set(tenant, category=TriageMode.OFF, priority=TriageMode.OFF, technician=TriageMode.OFF)
    enhancement = webhook_enhancement(post_webhook, northwind)
    triage_decide(enhancement=enhancement)
    sdp.fail_next(status="timeout", method="PUT", delay=1.5, process=False)
    tasks.apply_decisions(str(enhancement.pk))
    sdp.edit_request("555001", group="DESK")

    tasks.apply_decisions(str(enhancement.pk))
    decision = decisions_of(enhancement)["group"]
    assert decision.outcome == Outcome.HUMAN_SET and "unclear" in decision.reason
    assert sdp.requests["555001"]["group"] == {"name": "DESK"}
    assert len(puts_to(sdp)) == 1


@pytest.mark.parametrize(
    ("mode", "outcome", "said"),
    [
        (TriageMode.OFF, Outcome.REJECTED, "not written: its triage was switched off while the write waited"),
        (TriageMode.SUGGEST, Outcome.SUGGESTED, "kept as a suggestion, not written: it was switched to suggest-only"),
        (TriageMode.APPLY, Outcome.LOW_CONFIDENCE, "not written: its confidence"),  # below the new threshold
    ],
)
def test_a_retried_write_reads_the_fields_setting_again(northwind, post_webhook, mode, outcome, said):
    # The same rules as an approval of held writes (tests/test_triage_review.py), at every attempt.
    tenant, sdp = northwind.tenant, northwind.sdp
    modes_set(tenant, priority=TriageMode.OFF, technician=TriageMode.OFF)
    enhancement = webhook_enhancement(post_webhook, northwind)
    triage_decide(enhancement=enhancement)
    assert decisions_of(enhancement)["group"].confidence < 1.0  # a threshold of 100% is above it
    sdp.fail_next(status=500, method="PUT")
    assert tasks.apply_decisions(str(enhancement.pk)) == {"retry": 2}

    # Between the failed attempt and the retry, a lead changes the group's setting.
    triage_setting_update(tenant=tenant, field="group", mode=mode, threshold=1.0)
    TriageDecision.objects.filter(enhancement=enhancement).update(
        next_attempt_at=None, created_at=timezone.now() - timedelta(minutes=5)
    )
    assert triage_sweep() == 1

    decisions = decisions_of(enhancement)
    assert decisions["group"].outcome == outcome and said in decisions["group"].reason
    assert "group" not in sdp.requests["555001"]
    assert decisions["category"].outcome == Outcome.APPLIED  # still on apply: written by the retry
    assert [set(update["changes"]) for update in sdp.updates["555001"]] == [{"category", "subcategory"}]


def test_deciding_twice_does_not_touch_a_written_field(northwind, post_webhook):
    modes_set(northwind.tenant, priority=TriageMode.OFF, technician=TriageMode.OFF)
    enhancement = webhook_enhancement(post_webhook, northwind)
    triage_decide(enhancement=enhancement)
    tasks.apply_decisions(str(enhancement.pk))
    triage_decide(enhancement=enhancement)
    tasks.apply_decisions(str(enhancement.pk))
    assert {d.outcome for d in decisions_of(enhancement).values()} == {Outcome.APPLIED}
    assert len(puts_to(northwind.sdp)) == 1


# --- undo -----------------------------------------------------------------------------------------------------
def test_undo_writes_the_previous_value_back_and_says_so_in_a_note(northwind, post_webhook, admin_user):
    sdp = northwind.sdp
    decision = group_written_over_default(northwind, post_webhook)

    result = triage_undo(decision_id=decision.pk, user=admin_user)
    assert result.undone, result.message
    assert sdp.requests["555001"]["group"]["name"] == "DESK"
    note = sdp.notes["555001"][-1]
    assert "undid" in note["description"] and "Support group" in note["description"]
    assert "admin" in note["description"] and note["show_to_requester"] is False
    decision.refresh_from_db()
    assert decision.outcome == Outcome.UNDONE and decision.undone_by == admin_user and decision.undo_note_id
    assert "undo" in sdp.updates["555001"][-1]["update_reason"]
    assert not triage_undo(decision_id=decision.pk, user=admin_user).undone  # once


def test_undo_never_overwrites_a_later_human_change(northwind, post_webhook, admin_user):
    modes_set(northwind.tenant, priority=TriageMode.OFF, technician=TriageMode.OFF, category=TriageMode.OFF)
    enhancement = webhook_enhancement(post_webhook, northwind)
    triage_decide(enhancement=enhancement)
    tasks.apply_decisions(str(enhancement.pk))
    northwind.sdp.edit_request("555001", group="INFRA")
    decision = decisions_of(enhancement)["group"]
    result = triage_undo(decision_id=decision.pk, user=admin_user)
    assert not result.undone and "INFRA" in result.message
    assert northwind.sdp.requests["555001"]["group"] == {"name": "INFRA"}


# --- acceptance -----------------------------------------------------------------------------------------------
def test_acceptance_when_the_ticket_is_resolved(northwind, post_webhook):
    tenant, sdp = northwind.tenant, northwind.sdp
    modes_set(tenant, priority=TriageMode.SUGGEST, technician=TriageMode.SUGGEST)
    enhancement = webhook_enhancement(post_webhook, northwind)
    triage_decide(enhancement=enhancement)
    tasks.apply_decisions(str(enhancement.pk))
    suggested_technician = decisions_of(enhancement)["technician"].value

    # A technician keeps our group, changes our category, assigns the suggested technician; SDP resolves it.
    resolved = dict(
        sdp.requests["555001"],
        status={"name": "Resolved"},
        category={"name": "Software"},
        subcategory={"name": "Installation"},
        technician={"name": suggested_technician},
        resolution={"content": "Reinstalled the VPN client."},
    )
    response = post_webhook("northwind", {"event": "request_resolved", "request": resolved}, secret=northwind.secret)
    assert response.status_code == 200
    assert tasks.sweep()["evaluated"] == 1  # the every-minute sweep compares resolved tickets

    decisions = decisions_of(enhancement)
    assert decisions["group"].acceptance == TriageDecision.Acceptance.KEPT and decisions["group"].correct
    assert decisions["category"].acceptance == TriageDecision.Acceptance.CHANGED
    assert decisions["category"].final_value == "Software" and decisions["category"].correct is False
    assert decisions["technician"].acceptance == TriageDecision.Acceptance.NEVER_APPLIED
    assert decisions["technician"].correct is True


# --- through the pipeline -------------------------------------------------------------------------------------
def test_pipeline_triages_notes_the_routing_and_queues_the_write(northwind, post_webhook):
    from enhancements import tasks as pipeline_tasks

    tenant, sdp = northwind.tenant, northwind.sdp
    modes_set(tenant, priority=TriageMode.SUGGEST, technician=TriageMode.OFF, category=TriageMode.SUGGEST)
    enhancement = webhook_enhancement(post_webhook, northwind)
    pipeline_tasks.process_enhancement(str(enhancement.pk))
    enhancement.refresh_from_db()

    assert enhancement.status == Enhancement.Status.POSTED, enhancement.error
    assert "triage" in enhancement.timings
    note = sdp.notes["555001"][0]["description"]
    assert "Suggested routing" in note and "Support group: NET" in note and "being set" in note
    assert "Category and subcategory: Network / VPN" in note
    assert enhancement.output["category_suggestion"] == "Network / VPN"
    decisions = decisions_of(enhancement)
    assert decisions["group"].outcome == Outcome.PENDING and "technician" not in decisions

    tasks.apply_decisions(str(enhancement.pk))  # what the queued task runs
    assert sdp.requests["555001"]["group"]["name"] == "NET"
    assert decisions_of(enhancement)["group"].outcome == Outcome.APPLIED


def test_triage_trouble_never_fails_the_note(northwind, post_webhook):
    from enhancements import tasks as pipeline_tasks

    modes_set(northwind.tenant)
    # A calibration row damaged by hand (points that are not numbers) makes triage raise.
    TriageCalibration.objects.filter(tenant=northwind.tenant, field="group").update(points=[["x", "y"]])
    enhancement = webhook_enhancement(post_webhook, northwind)
    pipeline_tasks.process_enhancement(str(enhancement.pk))
    enhancement.refresh_from_db()
    assert enhancement.status == Enhancement.Status.POSTED, enhancement.error
    assert not TriageDecision.objects.filter(enhancement=enhancement).exists()
    assert "Suggested routing" not in northwind.sdp.notes["555001"][0]["description"]


# --- the LLM path ---------------------------------------------------------------------------------------------
def test_llm_triage_picks_from_the_tenants_enums_with_group_descriptions(northwind, post_webhook, openai_fake):
    SdpChoice.objects.filter(tenant=northwind.tenant, kind="group", name="NET").update(description="NET = network")
    openai_fake.set_response(
        {
            "category": "Network", "category_confidence": 0.93, "subcategory": "VPN", "subcategory_confidence": 0.9,
            "priority": "High", "priority_confidence": 0.7, "group": "NET", "group_confidence": 0.95,
            "technician": "Tom Becker", "technician_confidence": 0.6,
        }
    )  # fmt: skip
    enhancement = webhook_enhancement(post_webhook, northwind)
    decisions = {d.field: d for d in triage_decide(enhancement=enhancement, use_llm=True)}

    assert {(d.provider, d.model) for d in decisions.values()} == {("openai", "fake-model")}
    assert (decisions["group"].value, decisions["group"].confidence) == ("NET", 0.95)
    assert decisions["category"].subvalue == "VPN"
    body = openai_fake.requests_log[-1].json
    schema = body["response_format"]["json_schema"]["schema"]
    assert set(schema["properties"]["group"]["enum"]) == set(DATA["choices"]["group"]) | {""}
    assert "Tom Becker" in schema["properties"]["technician"]["enum"]
    assert "NET = network" in body["messages"][1]["content"]
    assert "VPN keeps disconnecting" in body["messages"][1]["content"]


def test_llm_answer_outside_the_lists_falls_back_to_the_vote(northwind, post_webhook, openai_fake):
    openai_fake.set_response({"category": "Networking", "group": "Network team"})
    enhancement = webhook_enhancement(post_webhook, northwind)
    decisions = {d.field: d for d in triage_decide(enhancement=enhancement, use_llm=True)}
    assert decisions["group"].provider == "offline" and decisions["group"].value == "NET"
    assert "LLM unavailable" in decisions["group"].reason


def test_triage_set_command(northwind, capsys):
    from django.core.management.base import CommandError

    call_command("triage_set", "northwind", "group", "--mode", "apply", "--threshold", "0.8", "--default", "DESK")
    out = capsys.readouterr().out
    assert out.startswith("northwind group: apply at 0.80, default “DESK” counts as unset")
    setting = TriageSetting.objects.get(tenant=northwind.tenant, field="group")
    assert (setting.mode, setting.threshold, setting.default_value) == ("apply", 0.8, "DESK")
    with pytest.raises(CommandError, match="between 0 and 1"):
        call_command("triage_set", "northwind", "group", "--threshold", "1.5")
    with pytest.raises(CommandError, match="No tenant"):
        call_command("triage_set", "nobody", "group")
