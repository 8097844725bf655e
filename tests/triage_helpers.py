"""Helpers shared by the triage tests: the Northwind tenant (the `northwind` fixture in conftest.py), its SDP
lists, a triaged enhancement, its decisions and the writes SDP got."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from enhancements.models import Enhancement
from enhancements.triage import tasks
from enhancements.triage.choices import choices_refresh
from enhancements.triage.models import TriageCalibration, TriageDecision, TriageMode
from enhancements.triage.services import triage_decide, triage_setting_update
from tests.fakes.sdp import FakeServiceDesk
from tests.fixtures.triage.load import labelled_load, labelled_set
from tickets.models import Tenant

DATA = labelled_set()
NEW_REQUEST = {
    "id": "555001",
    "subject": "VPN keeps disconnecting on my laptop",
    "description": "<p>The FortiClient VPN drops every few minutes since this morning, my RDP session is lost.</p>",
    "status": {"name": "Open"},
    "priority": {"name": "Medium"},
    "requester": {"name": "Dana Whitfield", "email_id": "dana@northwind.example"},
}


def sdp_choices_set(sdp: FakeServiceDesk, **overrides: Any) -> None:
    """Serve the labelled set's lists (categories, priorities, groups, technicians) from the SDP fake."""
    choices = DATA["choices"]
    sdp.set_choices(
        categories=overrides.get("categories", choices["subcategory"]),
        priorities=choices["priority"],
        groups=choices["group"],
        technicians=choices["technician"],
    )


@dataclass(frozen=True)
class Northwind:
    tenant: Tenant
    secret: str
    sdp: FakeServiceDesk


def northwind_create(make_tenant: Any, sdp: FakeServiceDesk) -> Northwind:
    """Return a tenant with credentials, its labelled history, its SDP lists cached and a fitted-looking calibration."""
    result = make_tenant("northwind", sdp_base_url=sdp.url, sdp_api_key=sdp.api_key)
    tenant = result.tenant
    labelled_load(tenant)
    sdp_choices_set(sdp)
    choices_refresh(tenant=tenant)
    # A calibration that maps the vote's raw score to itself (in steps of 0.05), stored as triage_report would
    # store one: these tests are about the rules; tests/test_triage_quality.py fits real ones on the labelled set.
    steps = [[i / 20, i / 20] for i in range(21)]
    for name in ("category", "subcategory", "priority", "group", "technician"):
        TriageCalibration.objects.create(tenant=tenant, field=name, points=steps, samples=100)
    sdp.add_request(NEW_REQUEST)
    return Northwind(tenant=tenant, secret=result.secret, sdp=sdp)


def webhook_enhancement(post_webhook: Any, tenant_result: Any, request: dict[str, Any] = NEW_REQUEST) -> Enhancement:
    """Post the request's webhook for the tenant; return the enhancement it queued."""
    response = post_webhook(tenant_result.tenant.slug, {"request": request}, secret=tenant_result.secret)
    assert response.status_code == 202, response.content
    return Enhancement.objects.get(pk=response.json()["enhancement_id"])


def decisions_of(enhancement: Enhancement) -> dict[str, TriageDecision]:
    """Return the enhancement's triage decisions by field."""
    return {d.field: d for d in TriageDecision.objects.filter(enhancement=enhancement)}


def puts_to(sdp: FakeServiceDesk, request_id: str = "555001") -> list[Any]:
    """Return the PUTs of the request SDP received."""
    return [r for r in sdp.requests_log if r.method == "PUT" and r.path.endswith(f"/requests/{request_id}")]


def modes_set(tenant: Tenant, threshold: float = 0.5, **modes: str) -> None:
    """Set every field to apply at the threshold, except the fields given another mode."""
    for field in ("category", "priority", "group", "technician"):
        triage_setting_update(tenant=tenant, field=field, mode=modes.get(field, TriageMode.APPLY), threshold=threshold)


def group_written_over_default(northwind: Northwind, post_webhook: Any) -> TriageDecision:
    """Triage only the group of a request still at the tenant's default group DESK; return the written decision."""
    tenant, sdp = northwind.tenant, northwind.sdp
    modes_set(tenant, category=TriageMode.OFF, priority=TriageMode.OFF, technician=TriageMode.OFF)
    triage_setting_update(tenant=tenant, field="group", default_value="DESK")
    request = dict(NEW_REQUEST, group={"name": "DESK"})
    sdp.add_request(request)
    enhancement = webhook_enhancement(post_webhook, northwind, request)
    triage_decide(enhancement=enhancement)
    tasks.apply_decisions(str(enhancement.pk))
    decision = decisions_of(enhancement)["group"]
    assert decision.outcome == TriageDecision.Outcome.APPLIED, decision.reason
    assert (decision.previous_value, decision.value) == ("DESK", "NET")
    assert sdp.requests["555001"]["group"]["name"] == "NET"
    return decision
