"""The LLM's self-reported triage confidence gates nothing until it is calibrated on the tenant's history, and
is then used through the calibration (leave-one-out with the LLM, like the vote's). LLM: the OpenAI fake."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from enhancements.triage.calibration import triage_report_build
from enhancements.triage.models import TriageCalibration, TriageDecision, TriageMode
from enhancements.triage.services import triage_decide, triage_setting_update
from tests.triage_helpers import decisions_of, webhook_enhancement

pytestmark = pytest.mark.django_db
Outcome = TriageDecision.Outcome
FIELDS = ("category", "subcategory", "priority", "group", "technician")


def _always(group: str, confidence: float) -> dict[str, object]:
    """An over-confident model: the same group for every ticket, sure of it every time."""
    answer: dict[str, object] = {name: "" for name in FIELDS}
    answer |= {f"{name}_confidence": 0.0 for name in FIELDS}
    answer |= {"group": group, "group_confidence": confidence}
    return answer


@pytest.fixture
def overconfident(northwind, openai_fake):
    openai_fake.set_response(_always("NET", 0.95))
    triage_setting_update(tenant=northwind.tenant, field="group", mode=TriageMode.APPLY, threshold=0.8)
    for field in ("category", "priority", "technician"):
        triage_setting_update(tenant=northwind.tenant, field=field, mode=TriageMode.OFF)
    return northwind


def test_an_uncalibrated_llm_confidence_never_writes(overconfident, post_webhook):
    enhancement = webhook_enhancement(post_webhook, overconfident)
    triage_decide(enhancement=enhancement)
    group = decisions_of(enhancement)["group"]
    assert (group.provider, group.value, group.raw_score) == ("openai", "NET", 0.95)
    assert group.outcome == Outcome.LOW_CONFIDENCE and "triage_report --llm" in group.reason


def test_the_llm_confidence_is_calibrated_on_history_and_gates_on_the_calibrated_figure(
    overconfident, post_webhook, openai_fake
):
    tenant = overconfident.tenant
    report = triage_report_build(tenant=tenant, sample=60, provider="openai")
    fit = TriageCalibration.objects.get(tenant=tenant, field="llm:group")
    assert fit.samples >= 50 and report["provider"] == "openai"
    # "NET at 0.95" was right only for the NET tickets of the sample (about one in six): that is what it means.
    right = report["fields"]["group"]["accuracy_all"]
    assert right < 0.35
    # The vote's own calibration is untouched.
    assert TriageCalibration.objects.get(tenant=tenant, field="group").samples == 100

    enhancement = webhook_enhancement(post_webhook, overconfident)
    triage_decide(enhancement=enhancement)
    group = decisions_of(enhancement)["group"]
    assert group.raw_score == 0.95 and group.confidence < 0.5
    assert group.outcome == Outcome.LOW_CONFIDENCE and "below the threshold 80%" in group.reason


def test_the_command_measures_the_llm(overconfident, capsys):
    call_command("triage_report", overconfident.tenant.slug, "--llm", "--sample", "40", "--no-save")
    out = capsys.readouterr().out
    assert "the LLM's confidence" in out and "Support group:" in out
    assert not TriageCalibration.objects.filter(field__startswith="llm:").exists()
