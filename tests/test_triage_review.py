"""Triage and review: nothing is written for a review-required tenant before a lead approves, and a reject
drops held writes or undoes ours (never a technician's later value). Real HTTP against the SDP fake."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from enhancements import tasks as pipeline_tasks
from enhancements.models import Enhancement
from enhancements.services import enhancement_approve, enhancement_reject
from enhancements.triage import tasks
from enhancements.triage.models import TriageDecision, TriageMode
from enhancements.triage.services import (
    triage_decide,
    triage_decision_reject,
    triage_setting_update,
    triage_sweep,
)
from tests.triage_helpers import decisions_of, group_written_over_default, modes_set, puts_to, webhook_enhancement
from tickets.models import Tenant

pytestmark = pytest.mark.django_db
Outcome = TriageDecision.Outcome


def _reviewed_tenant(northwind):
    Tenant.objects.filter(pk=northwind.tenant.pk).update(review_required=True)
    northwind.tenant.refresh_from_db()
    modes_set(northwind.tenant, priority=TriageMode.SUGGEST, technician=TriageMode.OFF)


def _held_enhancement(northwind, post_webhook):
    _reviewed_tenant(northwind)
    enhancement = webhook_enhancement(post_webhook, northwind)
    pipeline_tasks.process_enhancement(str(enhancement.pk))
    enhancement.refresh_from_db()
    assert enhancement.status == Enhancement.Status.AWAITING_REVIEW, enhancement.error
    return enhancement


def _sweep_everything() -> None:
    TriageDecision.objects.update(created_at=timezone.now() - timedelta(minutes=5))
    triage_sweep()


def test_review_required_tenant_writes_nothing_to_sdp_until_a_lead_approves(northwind, post_webhook, admin_user):
    sdp = northwind.sdp
    enhancement = _held_enhancement(northwind, post_webhook)
    decisions = decisions_of(enhancement)
    assert decisions["group"].outcome == Outcome.AWAITING_REVIEW and "approves" in decisions["group"].reason
    assert decisions["category"].outcome == Outcome.AWAITING_REVIEW
    # Neither the queued task nor the every-minute sweep writes a held decision.
    tasks.apply_decisions(str(enhancement.pk))
    _sweep_everything()
    assert puts_to(sdp) == [] and "group" not in sdp.requests["555001"]

    result = enhancement_approve(enhancement_id=str(enhancement.pk), user=admin_user)
    assert result.changed and "triage field(s) are being written" in result.message
    assert decisions_of(enhancement)["group"].outcome == Outcome.PENDING
    tasks.apply_decisions(str(enhancement.pk))  # what the queued task runs
    assert sdp.requests["555001"]["group"]["name"] == "NET"
    group = decisions_of(enhancement)["group"]
    assert group.outcome == Outcome.APPLIED and "Approved by admin" in group.reason


def test_approval_still_leaves_a_field_a_person_set_while_the_note_waited(northwind, post_webhook, admin_user):
    sdp = northwind.sdp
    enhancement = _held_enhancement(northwind, post_webhook)
    sdp.edit_request("555001", group="INFRA")
    enhancement_approve(enhancement_id=str(enhancement.pk), user=admin_user)
    tasks.apply_decisions(str(enhancement.pk))
    assert sdp.requests["555001"]["group"] == {"name": "INFRA"}
    assert decisions_of(enhancement)["group"].outcome == Outcome.HUMAN_SET


def test_rejecting_a_held_note_drops_its_triage(northwind, post_webhook, admin_user):
    sdp = northwind.sdp
    enhancement = _held_enhancement(northwind, post_webhook)
    result = enhancement_reject(enhancement_id=str(enhancement.pk), user=admin_user)
    assert result.changed and "will not be written" in result.message
    decisions = decisions_of(enhancement)
    assert decisions["group"].outcome == Outcome.REJECTED and "Rejected by admin" in decisions["group"].reason
    tasks.apply_decisions(str(enhancement.pk))
    _sweep_everything()
    assert puts_to(sdp) == []


def test_rejecting_a_written_suggestion_restores_the_value_recorded_at_apply_time(northwind, post_webhook, admin_user):
    sdp = northwind.sdp
    decision = group_written_over_default(northwind, post_webhook)

    result = triage_decision_reject(decision_id=decision.pk, user=admin_user)
    assert result.undone, result.message
    assert sdp.requests["555001"]["group"]["name"] == "DESK"
    decision.refresh_from_db()
    assert decision.outcome == Outcome.UNDONE and "undid" in sdp.notes["555001"][-1]["description"]


def test_rejecting_never_clobbers_a_technicians_later_change(northwind, post_webhook, admin_client):
    sdp = northwind.sdp
    modes_set(northwind.tenant, priority=TriageMode.OFF, technician=TriageMode.OFF, category=TriageMode.OFF)
    enhancement = webhook_enhancement(post_webhook, northwind)
    triage_decide(enhancement=enhancement)
    tasks.apply_decisions(str(enhancement.pk))
    sdp.edit_request("555001", group="INFRA")
    decision = decisions_of(enhancement)["group"]
    page = admin_client.post(
        "/admin/enhancements/triagedecision/",
        {"action": "reject_decisions", "_selected_action": [decision.pk]},
        follow=True,
    )
    assert page.status_code == 200 and "INFRA" in page.content.decode()
    assert sdp.requests["555001"]["group"] == {"name": "INFRA"}
    decision.refresh_from_db()
    assert decision.outcome == Outcome.APPLIED


@pytest.mark.parametrize(
    ("mode", "outcome", "said"),
    [
        (TriageMode.OFF, Outcome.REJECTED, "not written: its triage was switched off while the note waited"),
        (TriageMode.SUGGEST, Outcome.SUGGESTED, "kept as a suggestion, not written: it was switched to suggest-only"),
        (TriageMode.APPLY, Outcome.LOW_CONFIDENCE, "not written: its confidence"),  # below the new threshold
    ],
)
def test_approval_writes_no_field_a_lead_switched_off_or_to_suggest_while_the_note_waited(
    northwind,
    post_webhook,
    admin_user,
    mode,
    outcome,
    said,
):
    sdp = northwind.sdp
    enhancement = _held_enhancement(northwind, post_webhook)
    assert decisions_of(enhancement)["group"].confidence < 1.0  # a threshold of 100% is above it
    triage_setting_update(tenant=northwind.tenant, field="group", mode=mode, threshold=1.0)

    result = enhancement_approve(enhancement_id=str(enhancement.pk), user=admin_user)
    assert result.changed and f"Support group {said}" in result.message and "while the note waited" in result.message
    assert "1 triage field(s) are being written." in result.message  # the category, still on apply
    tasks.apply_decisions(str(enhancement.pk))
    _sweep_everything()
    decisions = decisions_of(enhancement)
    assert decisions["group"].outcome == outcome and f"Approved by admin, but {said}" in decisions["group"].reason
    assert "group" not in sdp.requests["555001"]
    assert decisions["category"].outcome == Outcome.APPLIED
    assert [set(update["changes"]) for update in sdp.updates["555001"]] == [{"category", "subcategory"}]


@pytest.mark.django_db(transaction=True)  # the reject runs on the fake's thread, its own connection: committed rows
def test_a_reject_landing_during_the_sdp_read_before_the_put_is_never_written(northwind, post_webhook, admin_user):
    sdp = northwind.sdp
    modes_set(northwind.tenant, priority=TriageMode.OFF, technician=TriageMode.OFF)
    enhancement = webhook_enhancement(post_webhook, northwind)
    triage_decide(enhancement=enhancement)
    pending = [d for d in decisions_of(enhancement).values() if d.outcome == Outcome.PENDING]
    assert {d.field for d in pending} == {"category", "group"}
    answers = []

    def reject_while_sdp_answers(request_id: str) -> None:
        # The lead rejects both suggestions (admin, another request) while the apply waits for the GET's answer.
        sdp.on_get_request = None
        try:
            answers.extend(triage_decision_reject(decision_id=d.pk, user=admin_user) for d in pending)
        finally:
            connection.close()

    sdp.on_get_request = reject_while_sdp_answers
    tasks.apply_decisions(str(enhancement.pk))

    assert [a.message for a in answers] == [
        f"Rejected: {d.get_field_display()} of #555001 will not be written." for d in pending
    ]
    assert puts_to(sdp) == [] and sdp.updates["555001"] == []
    assert "group" not in sdp.requests["555001"] and "category" not in sdp.requests["555001"]
    decisions = decisions_of(enhancement)
    assert {d.outcome for d in decisions.values() if d.field in ("category", "group")} == {Outcome.REJECTED}
    assert all(d.write_started_at is None for d in decisions.values())
