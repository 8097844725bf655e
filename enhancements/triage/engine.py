"""The offline triage: a similarity-weighted vote over similar resolved tickets' final fields.

Each similar resolved ticket votes for the values it ended with, with its similarity as the weight. The raw
score of the winner is its share of the weight plus a prior (a pseudo-neighbour that votes for "none of these"),
so two agreeing weak neighbours score lower than ten agreeing strong ones. The raw score is then mapped to a
probability of being right by the tenant's calibration (calibration.py), fitted on its own history.

`field_suggest` is the one function that makes a suggestion for a field; `priority_suggest` adds urgency cues
(e.g. "whole office down") as extra votes, for callers that detect them.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tickets import search
from tickets.models import Tenant, Ticket

# The fields a vote is held on; "subcategory" is voted among neighbours that share the winning category.
VOTE_FIELDS = ("category", "subcategory", "priority", "group", "technician")
NEIGHBOURS = 10
PRIOR_WEIGHT = 0.5
# Similarity is sharpened so the closest tickets count more than the merely related ones.
SIMILARITY_POWER = 2.0


@dataclass(frozen=True)
class Neighbour:
    """A similar resolved ticket: its SDP id, similarity (0..1) and final field values."""

    sdp_id: str
    score: float
    fields: Mapping[str, str]


@dataclass
class Suggestion:
    """One field's suggestion: the value, the raw vote score and the calibrated confidence."""

    field: str
    value: str
    raw_score: float
    confidence: float | None = None
    tallies: dict[str, float] = dataclasses.field(default_factory=dict)
    provider: str = "offline"
    model: str = "neighbour-vote-v1"

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable summary."""
        top = sorted(self.tallies.items(), key=lambda kv: -kv[1])[:3]
        return {
            "field": self.field,
            "value": self.value,
            "raw_score": round(self.raw_score, 4),
            "confidence": None if self.confidence is None else round(self.confidence, 4),
            "top": [[name, round(weight, 4)] for name, weight in top],
            "provider": self.provider,
            "model": self.model,
        }


def _name(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("name") or "").strip()
    return value.strip() if isinstance(value, str) else ""


def ticket_final_fields(ticket: Ticket) -> dict[str, str]:
    """Return the ticket's routing fields by name (columns where we keep them, else the stored SDP request)."""
    raw = ticket.raw if isinstance(ticket.raw, dict) else {}
    return {
        "category": ticket.category or _name(raw.get("category")),
        "subcategory": _name(raw.get("subcategory")),
        "priority": ticket.priority or _name(raw.get("priority")),
        "group": _name(raw.get("group")),
        "technician": ticket.technician or _name(raw.get("technician")),
    }


def neighbours_find(*, tenant: Tenant, ticket: Ticket, limit: int = NEIGHBOURS) -> list[Neighbour]:
    """Return the ticket's most similar resolved tickets of the same tenant, with their final fields."""
    text = f"{ticket.subject}\n{ticket.description}".strip()
    found = search.ticket_search_similar(tenant=tenant, text=text, limit=limit, exclude_sdp_id=ticket.sdp_id)
    return [Neighbour(sdp_id=t.sdp_id, score=float(score), fields=ticket_final_fields(t)) for t, score in found]


def _tally(
    neighbours: Iterable[Neighbour], field_name: str, allowed: set[str] | None, only: Mapping[str, str] | None = None
) -> tuple[dict[str, float], float]:
    tallies: dict[str, float] = defaultdict(float)
    total = 0.0
    for item in neighbours:
        if only and any(item.fields.get(k) != v for k, v in only.items()):
            continue
        weight = max(item.score, 0.0) ** SIMILARITY_POWER
        total += weight
        value = item.fields.get(field_name, "")
        if value and (allowed is None or value in allowed):
            tallies[value] += weight
    return dict(tallies), total


def field_suggest(
    *,
    field_name: str,
    neighbours: Iterable[Neighbour],
    allowed: set[str] | None = None,
    extra_votes: Mapping[str, float] | None = None,
    only: Mapping[str, str] | None = None,
) -> Suggestion | None:
    """Return the weighted-vote suggestion for a field (None when nobody votes).

    `allowed` restricts the vote to the tenant's SDP list (a value outside it never wins); `extra_votes` adds
    weight to values (cues a caller found in the ticket); `only` keeps the neighbours matching those values
    (the subcategory is voted among the winning category's tickets).
    """
    tallies, total = _tally(list(neighbours), field_name, allowed, only)
    for value, weight in (extra_votes or {}).items():
        if weight > 0 and (allowed is None or value in allowed):
            tallies[value] = tallies.get(value, 0.0) + weight
            total += weight
    if not tallies:
        return None
    value = max(sorted(tallies), key=lambda name: tallies[name])
    return Suggestion(field=field_name, value=value, raw_score=tallies[value] / (total + PRIOR_WEIGHT), tallies=tallies)


def priority_suggest(
    *,
    neighbours: Iterable[Neighbour],
    allowed: set[str] | None = None,
    cues: Mapping[str, float] | None = None,
) -> Suggestion | None:
    """Return the priority suggestion; `cues` maps priority names to extra weight from urgency cues in the ticket.

    The weight of a cue is on the scale of one very similar neighbour (1.0); the vote's raw score and the
    calibration treat it like any other vote.
    """
    return field_suggest(field_name="priority", neighbours=neighbours, allowed=allowed, extra_votes=cues)


def votes_all(
    *,
    neighbours: list[Neighbour],
    allowed: Mapping[str, set[str] | None] | None = None,
    priority_cues: Mapping[str, float] | None = None,
    subcategories_of: Mapping[str, set[str]] | None = None,
) -> dict[str, Suggestion]:
    """Return the raw (uncalibrated) suggestion of every vote field that has one."""
    allowed = allowed or {}
    result: dict[str, Suggestion] = {}
    category = field_suggest(field_name="category", neighbours=neighbours, allowed=allowed.get("category"))
    if category:
        result["category"] = category
        sub_allowed = allowed.get("subcategory")
        if subcategories_of is not None:
            sub_allowed = subcategories_of.get(category.value, set())
        sub = field_suggest(
            field_name="subcategory",
            neighbours=neighbours,
            allowed=sub_allowed,
            only={"category": category.value},
        )
        if sub:
            # The pair is right only if the category is: the subcategory's score is bounded by the category's.
            sub.raw_score = min(sub.raw_score, category.raw_score)
            result["subcategory"] = sub
    priority = priority_suggest(neighbours=neighbours, allowed=allowed.get("priority"), cues=priority_cues)
    if priority:
        result["priority"] = priority
    for name in ("group", "technician"):
        suggestion = field_suggest(field_name=name, neighbours=neighbours, allowed=allowed.get(name))
        if suggestion:
            result[name] = suggestion
    return result
