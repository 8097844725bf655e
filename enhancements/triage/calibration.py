"""Calibration and the leave-one-out report: how often the vote is right at each confidence, per field.

Leave-one-out: every resolved ticket of the tenant (or a sample) is triaged from the others (the search
excludes it), and the suggestion is compared with the value it ended with. That gives (raw score, right?)
pairs per field. An isotonic (monotone) regression fitted by pool-adjacent-violators maps a raw score to the
share of suggestions at that score that were right: a confidence of 0.8 then means "right about 80% of the
time on this tenant's history". The report's figures use cross-fitting (each fold is mapped by a fit on the
other folds), so they do not flatter the calibration with its own training data.

Pool-adjacent-violators is twenty lines; scikit-learn's IsotonicRegression would bring scipy and numpy into the
image for it, so it is written here.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.utils import timezone

from enhancements.triage.engine import (
    VOTE_FIELDS,
    Neighbour,
    Suggestion,
    neighbours_find,
    ticket_final_fields,
    votes_all,
)
from enhancements.triage.models import TriageCalibration
from tickets.models import Tenant, Ticket

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
BINS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0001)
FOLDS = 5
MIN_SAMPLES = 30  # below this a field's calibration is not trusted for writing
TARGET_ACCURACY = 0.9
MAX_POINTS = 24
MIN_BLOCK = 20


@dataclass(frozen=True)
class Calibrator:
    """A monotone step map from raw vote score to probability: each fitted block starts at a raw score."""

    points: tuple[tuple[float, float], ...]  # (lowest raw score of the block, probability), increasing
    samples: int = 0

    def __call__(self, raw: float) -> float:
        """Return the calibrated probability of a raw score (the uncalibrated score when nothing is fitted)."""
        if not self.points:
            return raw
        i = bisect.bisect_right([p[0] for p in self.points], raw)
        return self.points[max(0, i - 1)][1]

    @property
    def trusted(self) -> bool:
        """Return whether enough history was behind the fit to let it gate writes."""
        return self.samples >= MIN_SAMPLES


def isotonic_fit(pairs: Iterable[tuple[float, bool]]) -> Calibrator:
    """Return the isotonic fit of right/wrong against raw score (pool-adjacent-violators, smoothed)."""
    data = sorted((float(x), 1.0 if y else 0.0) for x, y in pairs)
    if not data:
        return Calibrator(points=())
    prior = sum(y for _, y in data) / len(data)
    # blocks: [sum of y, count, lowest x]; equal scores are one block (they must map to one value).
    ties: list[list[float]] = []
    last_x = None
    for x, y in data:
        if ties and x == last_x:
            ties[-1][0] += y
            ties[-1][1] += 1
        else:
            ties.append([y, 1.0, x])
        last_x = x
    blocks: list[list[float]] = []
    for tie in ties:
        blocks.append(tie)
        _pool(blocks)
    # A handful of tickets is not evidence: blocks smaller than MIN_BLOCK join a neighbour (still monotone).
    while len(blocks) > 1 and min(b[1] for b in blocks) < MIN_BLOCK:
        i = min(range(len(blocks)), key=lambda k: blocks[k][1])
        j = i + 1 if i == 0 or (i + 1 < len(blocks) and blocks[i + 1][1] < blocks[i - 1][1]) else i - 1
        low, high = sorted((i, j))
        blocks[low] = [blocks[low][0] + blocks[high][0], blocks[low][1] + blocks[high][1], blocks[low][2]]
        del blocks[high]
    # Shrink each block with two pseudo-tickets, one at the overall rate and one at even odds, so a small
    # block never claims certainty; then keep the order monotone.
    points: list[tuple[float, float]] = []
    best = 0.0
    for total, count, lowest in blocks:
        value = (total + prior + 0.5) / (count + 2)
        best = max(best, value)
        points.append((lowest, best))
    while len(points) > MAX_POINTS:
        # Merge the two closest neighbouring steps (bounds the stored size).
        i = min(range(len(points) - 1), key=lambda k: points[k + 1][1] - points[k][1])
        points[i : i + 2] = [(points[i][0], (points[i][1] + points[i + 1][1]) / 2)]
    return Calibrator(points=tuple((round(x, 5), round(y, 5)) for x, y in points), samples=len(data))


def _pool(blocks: list[list[float]]) -> None:
    """Merge the last blocks while they violate the increasing order (pool adjacent violators)."""
    while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
        y2, n2, _ = blocks.pop()
        blocks[-1][0] += y2
        blocks[-1][1] += n2


LLM_PREFIX = "llm:"


def calibration_key(field: str, provider: str) -> str:
    """Return the stored calibration's name: the field for the vote, "llm:<field>" for the LLM's confidence."""
    return field if provider == "offline" else f"{LLM_PREFIX}{field}"


def calibrator_for(*, tenant: Tenant, field: str, cache: dict[str, Calibrator] | None = None) -> Calibrator:
    """Return the tenant's stored calibration of a field (an empty, untrusted one when never fitted)."""
    if cache is not None and field in cache:
        return cache[field]
    row = TriageCalibration.objects.filter(tenant=tenant, field=field).first()
    result = Calibrator(points=tuple(tuple(p) for p in row.points), samples=row.samples) if row else Calibrator(())
    if cache is not None:
        cache[field] = result
    return result


# --- leave-one-out ----------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """One ticket's leave-one-out result for one field."""

    raw: float | None  # None: no suggestion
    right: bool


def _threshold_rows(confidences: Sequence[tuple[float | None, bool]], total: int) -> list[dict[str, Any]]:
    rows = []
    for threshold in THRESHOLDS:
        chosen = [right for conf, right in confidences if conf is not None and conf >= threshold]
        rows.append(
            {
                "threshold": threshold,
                "suggested": len(chosen),
                "coverage": round(len(chosen) / total, 4) if total else 0.0,
                "accuracy": round(sum(chosen) / len(chosen), 4) if chosen else None,
            }
        )
    return rows


def _bins(confidences: Sequence[tuple[float | None, bool]]) -> list[dict[str, float | int | None]]:
    rows = []
    for low, high in zip(BINS, BINS[1:], strict=False):
        inside = [(c, r) for c, r in confidences if c is not None and low <= c < high]
        rows.append(
            {
                "from": low,
                "to": min(high, 1.0),
                "count": len(inside),
                "mean_confidence": round(sum(c for c, _ in inside) / len(inside), 4) if inside else None,
                "accuracy": round(sum(r for _, r in inside) / len(inside), 4) if inside else None,
            }
        )
    return rows


def _advised(rows: list[dict[str, Any]], target: float) -> float | None:
    for row in rows:
        accuracy = row["accuracy"]
        if accuracy is not None and accuracy >= target and int(row["suggested"]) >= 20:
            return float(row["threshold"])
    return None


def field_report(outcomes: list[Outcome], *, target: float = TARGET_ACCURACY) -> tuple[Calibrator, dict]:
    """Return the fitted calibrator of one field and its report (accuracy/coverage per threshold, bins)."""
    total = len(outcomes)
    pairs = [(o.raw, o.right) for o in outcomes if o.raw is not None]
    calibrator = isotonic_fit(pairs)
    # Cross-fitted confidences: fold k is mapped by a fit on the other folds.
    indexed = [(i, o) for i, o in enumerate(outcomes) if o.raw is not None]
    confidences: list[tuple[float | None, bool]] = [(None, o.right) for o in outcomes if o.raw is None]
    for fold in range(FOLDS):
        train = [(o.raw, o.right) for i, o in indexed if i % FOLDS != fold]
        fitted = isotonic_fit(train)  # type: ignore[arg-type]
        confidences += [(fitted(o.raw), o.right) for i, o in indexed if i % FOLDS == fold]  # type: ignore[arg-type]
    suggested = [r for c, r in confidences if c is not None]
    rows = _threshold_rows(confidences, total)
    report = {
        "tickets": total,
        "suggested": len(suggested),
        "accuracy_all": round(sum(suggested) / len(suggested), 4) if suggested else None,
        "thresholds": rows,
        "calibration": _bins(confidences),
        "advised_threshold": _advised(rows, target),
        "target_accuracy": target,
    }
    return calibrator, report


def _llm_suggest(tenant: Tenant) -> Callable[[Ticket, list[Neighbour]], dict[str, Suggestion] | None]:
    """Return a suggester that asks the LLM (its raw self-reported confidence); None once the day's budget is spent."""
    from enhancements.llm_structured import LLMError
    from enhancements.triage.choices import choices_for
    from enhancements.triage.llm import llm_triage
    from tickets.ai_budget import llm_budget_check

    choices = choices_for(tenant=tenant)

    def suggest(ticket: Ticket, neighbours: list[Neighbour]) -> dict[str, Suggestion] | None:
        if llm_budget_check(tenant=tenant):
            return None
        try:
            return llm_triage(tenant=tenant, ticket=ticket, neighbours=neighbours, choices=choices)
        except LLMError:
            return {}  # no suggestion for this ticket: counted as such

    return suggest


def leave_one_out(
    *,
    tenant: Tenant,
    sample: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    provider: str = "offline",
) -> dict[str, list[Outcome]]:
    """Return, per vote field, each resolved ticket's outcome when triaged from the tenant's other tickets.

    With `provider="openai"` the LLM triages each ticket (one call each, counted against the tenant's daily AI
    budget; the run stops early when it is spent) and the raw score is the model's own confidence.
    """
    suggest = _llm_suggest(tenant) if provider != "offline" else None
    tickets = Ticket.objects.filter(tenant=tenant, is_resolved=True).order_by("id")
    if sample:
        # An even spread over the history rather than the oldest N.
        count = tickets.count()
        step = max(1, count // sample)
        ids = list(tickets.values_list("id", flat=True)[::step][:sample])
        tickets = Ticket.objects.filter(id__in=ids).order_by("id")
    outcomes: dict[str, list[Outcome]] = {name: [] for name in VOTE_FIELDS}
    rows = list(tickets)
    for done, ticket in enumerate(rows, 1):
        truth = ticket_final_fields(ticket)
        neighbours: list[Neighbour] = neighbours_find(tenant=tenant, ticket=ticket)
        if suggest is None:
            votes = votes_all(neighbours=neighbours)
        elif (answer := suggest(ticket, neighbours)) is None:
            break  # the tenant's AI budget for today is spent
        else:
            votes = answer
        for name in VOTE_FIELDS:
            if not truth.get(name):
                continue
            suggestion = votes.get(name)
            if name == "subcategory":
                # Right means the pair: a subcategory under the wrong category is wrong.
                right = bool(
                    suggestion
                    and suggestion.value == truth[name]
                    and votes.get("category")
                    and votes["category"].value == truth["category"]
                )
            else:
                right = bool(suggestion and suggestion.value == truth[name])
            outcomes[name].append(Outcome(raw=suggestion.raw_score if suggestion else None, right=right))
        if progress:
            progress(done, len(rows))
    return outcomes


def triage_report_build(
    *,
    tenant: Tenant,
    sample: int | None = None,
    save: bool = True,
    target: float = TARGET_ACCURACY,
    provider: str = "offline",
) -> dict:
    """Run leave-one-out over the tenant's history, fit and (by default) store the calibrations; return the report.

    `provider="openai"` measures and calibrates the LLM's self-reported confidence instead (stored as "llm:<field>").
    """
    started = time.perf_counter()
    outcomes = leave_one_out(tenant=tenant, sample=sample, provider=provider)
    fields: dict[str, dict] = {}
    for name, items in outcomes.items():
        calibrator, report = field_report(items, target=target)
        fields[name] = report
        if save:
            TriageCalibration.objects.update_or_create(
                tenant=tenant,
                field=calibration_key(name, provider),
                defaults={"points": [list(p) for p in calibrator.points], "samples": calibrator.samples,
                          "report": report},
            )  # fmt: skip
    return {
        "tenant": tenant.slug,
        "provider": provider,
        "generated_at": timezone.now().isoformat(),
        "seconds": round(time.perf_counter() - started, 2),
        "fields": fields,
    }
