"""Triage that acts: suggest, and where a lead allows, write category, priority, group and technician to SDP.

Modules: models (settings, cached SDP choices, decisions, calibrations), engine (the neighbour vote and the one
suggestion function), calibration (isotonic fit, leave-one-out report), choices (SDP list endpoints, cache),
llm (structured output over per-tenant enums), decide (settings, suggestions, decisions), writes (apply, retry,
undo), acceptance; services re-exports them all.
"""
