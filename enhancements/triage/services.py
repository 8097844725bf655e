"""Triage services, one import for callers: decide (decide.py), write and undo (writes.py), acceptance.

The rules are in the docstrings of decide.py and writes.py, and in docs/triage.md.
"""

from __future__ import annotations

from enhancements.triage.acceptance import triage_acceptance_record, triage_acceptance_sweep
from enhancements.triage.decide import (
    DEFAULT_THRESHOLD,
    TASK_APPLY,
    TriageResult,
    triage_decide,
    triage_enqueue_apply,
    triage_run_for_enhancement,
    triage_setting_update,
    triage_settings_list,
    triage_suggest,
    urgency_votes,
)
from enhancements.triage.writes import (
    MAX_WRITE_ATTEMPTS,
    SDP_KEYS,
    UndoResult,
    triage_apply,
    triage_decision_reject,
    triage_reject_for_enhancement,
    triage_release,
    triage_sweep,
    triage_undo,
)

__all__ = [
    "DEFAULT_THRESHOLD",
    "MAX_WRITE_ATTEMPTS",
    "SDP_KEYS",
    "TASK_APPLY",
    "TriageResult",
    "UndoResult",
    "triage_acceptance_record",
    "triage_acceptance_sweep",
    "triage_apply",
    "triage_decide",
    "triage_decision_reject",
    "triage_enqueue_apply",
    "triage_run_for_enhancement",
    "triage_reject_for_enhancement",
    "triage_release",
    "triage_setting_update",
    "triage_settings_list",
    "triage_suggest",
    "triage_sweep",
    "triage_undo",
    "urgency_votes",
]
