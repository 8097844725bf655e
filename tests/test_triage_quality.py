"""Triage quality on the labelled MSP set: leave-one-out accuracy per field, and calibration that means what it says.

The figures in docs/triage.md come from `manage.py triage_report` over the whole set; this test runs a spread
sample (fast) and checks the properties a lead relies on, not exact numbers.
"""

from __future__ import annotations

import json

import pytest
from django.core.management import call_command

from enhancements.triage.calibration import Calibrator, isotonic_fit
from enhancements.triage.models import TriageCalibration
from tests.fixtures.triage.load import labelled_load

pytestmark = pytest.mark.django_db


def test_isotonic_fit_is_monotone_and_shrinks_small_blocks():
    pairs = [(0.1, False)] * 20 + [(0.5, True), (0.5, False)] * 10 + [(0.9, True)] * 18 + [(0.9, False)] * 2
    fitted = isotonic_fit(pairs)
    values = [fitted(x / 100) for x in range(101)]
    assert values == sorted(values)
    assert fitted(0.1) < 0.15 and 0.4 < fitted(0.5) < 0.6 and 0.8 < fitted(0.9) < 0.92
    # Three right answers are not proof of certainty.
    assert isotonic_fit([(0.9, True)] * 3)(0.9) < 1.0
    assert Calibrator(points=()).trusted is False and fitted.trusted


def test_leave_one_out_report_on_the_labelled_set(tenant, capsys):
    labelled_load(tenant.tenant)
    call_command("triage_report", tenant.tenant.slug, "--sample", "150", "--json")
    report = json.loads(capsys.readouterr().out)
    fields = report["fields"]
    assert set(fields) == {"category", "subcategory", "priority", "group", "technician"}
    for name, data in fields.items():
        assert data["tickets"] == 150, name
        coverages = [row["coverage"] for row in data["thresholds"]]
        assert coverages == sorted(coverages, reverse=True), name  # a higher threshold never covers more
    # Routing by similar tickets works on MSP tickets; priority and the technician inside a group are harder.
    assert fields["category"]["accuracy_all"] > 0.85
    assert fields["group"]["accuracy_all"] > 0.85
    assert fields["subcategory"]["accuracy_all"] > 0.7
    assert fields["priority"]["accuracy_all"] > 0.5
    # Calibrated (cross-fitted, so on tickets the fit did not see): the share right is close to the confidence,
    # on average over the bands (expected calibration error) and in every well-populated band. The margins allow
    # for a 150-ticket sample; the whole set's figures are in docs/triage.md.
    for name, data in fields.items():
        bands = [b for b in data["calibration"] if b["count"]]
        ece = sum(b["count"] * abs(b["accuracy"] - b["mean_confidence"]) for b in bands) / sum(
            b["count"] for b in bands
        )
        assert ece < 0.15, (name, bands)
        for band in bands:
            if band["count"] >= 25:
                assert abs(band["accuracy"] - band["mean_confidence"]) < 0.2, (name, band)
    # The fitted calibrations are stored for the pipeline to use.
    stored = {c.field: c for c in TriageCalibration.objects.filter(tenant=tenant.tenant)}
    assert set(stored) == set(fields) and all(c.samples >= 130 for c in stored.values())
    assert stored["group"].report["advised_threshold"] is not None


def test_triage_report_text_and_bad_input(tenant, capsys):
    labelled_load(tenant.tenant)
    call_command("triage_report", tenant.tenant.slug, "--sample", "10", "--no-save")
    out = capsys.readouterr().out
    assert "Support group:" in out and "threshold  coverage  accuracy" in out
    assert not TriageCalibration.objects.exists()
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="No tenant"):
        call_command("triage_report", "nobody")
    with pytest.raises(CommandError, match="at least 1"):
        call_command("triage_report", tenant.tenant.slug, "--sample", "0")
