"""Triage in the admin: a lead switches one field from suggest to apply, sees the dry run and history, undoes."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from enhancements.models import Enhancement
from enhancements.services import enhancement_approve, enhancement_process
from enhancements.triage import tasks
from enhancements.triage.calibration import triage_report_build
from enhancements.triage.choices import choices_refresh
from enhancements.triage.models import SdpChoice, TriageCalibration, TriageDecision, TriageMode, TriageSetting
from enhancements.triage.services import triage_decide
from tests.fixtures.triage.load import labelled_load
from tests.review_helpers import operator, support_lead
from tests.triage_helpers import sdp_choices_set

pytestmark = pytest.mark.django_db

REQUEST = {
    "id": "555002",
    "subject": "Printer not printing",
    "description": "PRN-FLOOR2 shows jobs in the queue but nothing prints. Already turned it off and on.",
    "status": {"name": "Open"},
}


_MEASURED: list[dict] = []


@pytest.fixture
def measured(make_tenant, sdp):
    """A tenant with its history measured by the real leave-one-out (a sample, for speed) and lists cached."""
    result = make_tenant("northwind", sdp_base_url=sdp.url, sdp_api_key=sdp.api_key)
    labelled_load(result.tenant)
    sdp_choices_set(sdp)
    choices_refresh(tenant=result.tenant)
    if not _MEASURED:
        triage_report_build(tenant=result.tenant, sample=40)
        _MEASURED.extend(
            TriageCalibration.objects.filter(tenant=result.tenant).values("field", "points", "samples", "report")
        )
    else:
        # The same history gives the same report: the first test's leave-one-out, stored again (saves seconds).
        TriageCalibration.objects.bulk_create(TriageCalibration(tenant=result.tenant, **row) for row in _MEASURED)
    sdp.add_request(REQUEST)
    return result


def _overview(tenant) -> str:
    return reverse("admin:enhancements_triage_overview", args=[tenant.pk])


def _triaged(post_webhook, measured) -> Enhancement:
    response = post_webhook("northwind", {"request": REQUEST}, secret=measured.secret)
    enhancement = Enhancement.objects.get(pk=response.json()["enhancement_id"])
    triage_decide(enhancement=enhancement)
    return enhancement


def test_lead_sees_history_and_dry_run_then_switches_one_field_to_apply(client, measured, post_webhook, sdp):
    tenant = measured.tenant
    client.force_login(support_lead())
    enhancement = _triaged(post_webhook, measured)

    page = client.get(_overview(tenant))
    assert page.status_code == 200
    html = page.content.decode()
    group_row = re.search(r'<tr id="te-field-group">.*?</tr>', html, re.S).group(0)
    assert "Suggest (note and admin only)" in group_row and "selected>Suggest" in group_row
    assert re.search(r"\d+% <span class=\"help\">\(≥ 0.9\)", group_row), group_row  # accuracy at the threshold
    assert 'id="te-dry-run"' in html and "#555002" in html and "would write" in html
    # A trial threshold of 1.0 shows nothing would be written, without saving anything.
    trial = client.get(_overview(tenant), {"threshold_group": "1.0"}).content.decode()
    assert "below 100%" in trial
    assert not TriageSetting.objects.filter(tenant=tenant).exists()

    response = client.post(_overview(tenant), {"field": "group", "mode": "apply", "threshold": "0.8"}, follow=True)
    assert "Support group: Apply when confident at 80%." in [str(m) for m in response.context["messages"]]
    setting = TriageSetting.objects.get(tenant=tenant, field="group")
    assert (setting.mode, setting.threshold) == (TriageMode.APPLY, 0.8)

    # The next triage of the ticket writes the group (and only the group) to SDP.
    triage_decide(enhancement=enhancement)
    tasks.apply_decisions(str(enhancement.pk))
    assert sdp.requests["555002"]["group"]["name"] == "DESK"
    assert "category" not in sdp.requests["555002"]


def test_bad_setting_input_is_a_message_not_an_error(client, measured):
    client.force_login(support_lead())
    response = client.post(
        _overview(measured.tenant), {"field": "group", "mode": "apply", "threshold": "lots"}, follow=True
    )
    assert response.status_code == 200
    assert any("Not saved" in str(m) for m in response.context["messages"])
    response = client.post(
        _overview(measured.tenant), {"field": "colour", "mode": "apply", "threshold": "0.5"}, follow=True
    )
    assert any("field must be one of" in str(m) for m in response.context["messages"])
    assert client.get(_overview(measured.tenant), {"threshold_group": "x"}).status_code == 200


def test_undo_from_the_decisions_list(client, measured, post_webhook, sdp):
    tenant = measured.tenant
    TriageSetting.objects.create(tenant=tenant, field="group", mode=TriageMode.APPLY, threshold=0.5)
    enhancement = _triaged(post_webhook, measured)
    tasks.apply_decisions(str(enhancement.pk))
    decision = TriageDecision.objects.get(enhancement=enhancement, field="group")
    assert decision.outcome == TriageDecision.Outcome.APPLIED

    client.force_login(support_lead())
    url = reverse("admin:enhancements_triagedecision_changelist")
    response = client.post(url, {"action": "undo_writes", "_selected_action": [decision.pk]}, follow=True)
    assert any("Undone" in str(m) for m in response.context["messages"])
    assert sdp.requests["555002"].get("group") is None
    assert "undid" in sdp.notes["555002"][-1]["description"]


def test_operator_sees_but_cannot_change_or_undo(client, measured, post_webhook):
    client.force_login(operator())
    assert client.get(_overview(measured.tenant)).status_code == 200
    assert (
        client.post(_overview(measured.tenant), {"field": "group", "mode": "apply", "threshold": "0.5"}).status_code
        == 403
    )
    assert not TriageSetting.objects.exists()


def test_lead_writes_a_group_description_kept_across_refreshes(client, measured):
    client.force_login(support_lead())
    net = SdpChoice.objects.get(tenant=measured.tenant, kind="group", name="NET")
    url = reverse("admin:enhancements_sdpchoice_changelist") + "?kind__exact=group"
    page = client.get(url)
    assert page.status_code == 200
    rows = SdpChoice.objects.filter(tenant=measured.tenant, kind="group").order_by("name")
    form = {"form-TOTAL_FORMS": str(rows.count()), "form-INITIAL_FORMS": str(rows.count()), "_save": "Save"}
    for i, row in enumerate(rows.order_by("name", "kind")):
        form[f"form-{i}-id"] = str(row.pk)
        form[f"form-{i}-description"] = "network team, firewalls, VPN" if row.pk == net.pk else row.description
    assert client.post(url, form).status_code == 302
    choices_refresh(tenant=measured.tenant)
    net.refresh_from_db()
    assert net.description == "network team, firewalls, VPN"


def test_dashboard_shows_triage_beside_helpful_rate_and_review_edits(client, make_tenant, measured, post_webhook, sdp):
    tenant = measured.tenant
    # A reviewed note, edited by the lead before approval.
    tenant.review_required = True
    tenant.save()
    enhancement = Enhancement.objects.get(
        pk=post_webhook("northwind", {"request": REQUEST}, secret=measured.secret).json()["enhancement_id"]
    )
    assert enhancement_process(enhancement_id=str(enhancement.pk)) == Enhancement.Status.AWAITING_REVIEW
    enhancement.refresh_from_db()
    edited = enhancement.note_html.replace("</div>", "<p>Also check the toner on the second tray.</p></div>", 1)
    assert enhancement_approve(enhancement_id=str(enhancement.pk), user=None, note_html=edited).changed
    # The ticket is resolved with the triaged group kept.
    resolved = dict(sdp.requests["555002"], status={"name": "Resolved"}, group={"name": "DESK"})
    post_webhook("northwind", {"event": "request_resolved", "request": resolved}, secret=measured.secret)
    assert tasks.sweep()["evaluated"] == 1

    client.force_login(support_lead())
    page = client.get(reverse("admin:enhancements_dashboard"), {"tenant": tenant.pk})
    html = page.content.decode()
    row = re.search(r'<tr id="te-triage-northwind">.*?</tr>', html, re.S).group(0)
    edits = re.search(r'class="te-edits">(.*?)</td>', row, re.S).group(1)
    assert edits.startswith("100% of 1") and "of the text changed" in edits
    group = re.search(r'class="te-field-group">(.*?)</td>', row, re.S).group(1)
    assert "[suggest]" in group and "right" in group and "never applied" in group
