"""The pipeline's metrics: webhook answers counted in-process, the enhancements' state read from the database.

Everything about enhancements is read from the database at scrape time, so it is the same whichever worker
serves the scrape and it includes the work done by `qcluster`, which is another process altogether. The
counters are shared between gunicorn workers by project.metrics (multiprocess mode), which also serves them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from functools import wraps
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Count, F, Min, Q, Sum
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from prometheus_client import Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from enhancements.models import Enhancement
from project.metrics import PREFIX

logger = logging.getLogger(__name__)

# Upper bounds (seconds) of the time-to-note buckets: a note normally lands within seconds to a minute;
# the long tail is retries with backoff and notes held for review.
TIME_TO_NOTE_BUCKETS: tuple[float, ...] = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, 21600, 86400)

WEBHOOK_ANSWERS = Counter(
    f"{PREFIX}_webhook_responses",
    "Webhook answers by tenant and outcome (queued, duplicate, stored, ignored or the error code).",
    ["tenant", "outcome"],
)

# An unknown slug is an attacker's free choice; it must not become a label value (unbounded series).
UNKNOWN_TENANT = "unknown"
# The counter of each (tenant, outcome) seen, looked up once: labels() validates and locks on every call. As many as
# the counter's own series (authentic tenants times outcomes); nothing here removes a series.
_ANSWER_COUNTERS: dict[tuple[str, str], Any] = {}


def _outcome(response: HttpResponse) -> str:
    """Return the answer's `status` or `error` field, or the HTTP status when the body is not ours."""
    try:
        body = json.loads(response.content)
    except (ValueError, TypeError):
        return str(response.status_code)
    if isinstance(body, dict):
        return str(body.get("status") or body.get("error") or response.status_code)
    return str(response.status_code)


def count_webhook_answers(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Return the view wrapped so every answer is counted by tenant and outcome."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = view(request, *args, **kwargs)
        try:
            # The view names the tenant only once the call authenticated: the label must not tell an
            # unauthenticated caller which slugs exist.
            key = (getattr(request, "metrics_tenant", "") or UNKNOWN_TENANT, _outcome(response))
            child = _ANSWER_COUNTERS.get(key)
            if child is None:
                child = _ANSWER_COUNTERS.setdefault(key, WEBHOOK_ANSWERS.labels(tenant=key[0], outcome=key[1]))
            child.inc()
        except Exception:
            # Metrics are never a reason to lose a webhook answer.
            logger.warning("could not count a webhook answer", exc_info=True)
        return response

    return wrapper


class DatabaseCollector(Collector):
    """Collect the pipeline's state from the database: identical in every process."""

    def collect(self) -> Iterator[Metric]:
        """Yield the database-backed metrics, or only `..._metrics_database_up 0` when the database fails."""
        up = GaugeMetricFamily(f"{PREFIX}_metrics_database_up", "Whether the database answered this scrape.")
        try:
            families = list(self._families())
        except DatabaseError:
            logger.warning("metrics: the database did not answer the scrape", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self) -> Iterable[Metric]:
        enhancement = Enhancement
        now = timezone.now()
        rows = enhancement.objects.all()

        by_status = GaugeMetricFamily(
            f"{PREFIX}_enhancements", "Enhancements by tenant and current status.", labels=["tenant", "status"]
        )
        statuses = [value for value, _ in enhancement.Status.choices]
        seen: dict[str, dict[str, int]] = {}
        for row in rows.order_by().values("tenant__slug", "status").annotate(n=Count("pk")):
            seen.setdefault(row["tenant__slug"], {})[row["status"]] = row["n"]
        for tenant, counts in sorted(seen.items()):
            # Every status is present (0 included) so a rate or an alert never sees a series vanish.
            for status in statuses:
                by_status.add_metric([tenant, status], counts.get(status, 0))
        yield by_status

        queued = rows.filter(status=enhancement.Status.QUEUED).aggregate(n=Count("pk"), oldest=Min("created_at"))
        depth = GaugeMetricFamily(f"{PREFIX}_queue_depth", "Enhancements waiting in the queue (status queued).")
        depth.add_metric([], queued["n"])
        yield depth
        oldest = GaugeMetricFamily(
            f"{PREFIX}_queue_oldest_age_seconds", "Age of the oldest queued enhancement (0 when the queue is empty)."
        )
        oldest.add_metric([], (now - queued["oldest"]).total_seconds() if queued["oldest"] else 0.0)
        yield oldest
        yield from self._due(enhancement, now)

        tokens = CounterMetricFamily(
            f"{PREFIX}_llm_tokens",
            "LLM tokens used by all enhancements, by tenant and kind (prompt or completion).",
            labels=["tenant", "kind"],
        )
        token_rows = (
            rows.order_by()
            .values("tenant__slug")
            .annotate(prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"))
        )
        for used in sorted(token_rows, key=lambda r: r["tenant__slug"]):
            tokens.add_metric([used["tenant__slug"], "prompt"], used["prompt"] or 0)
            tokens.add_metric([used["tenant__slug"], "completion"], used["completion"] or 0)
        yield tokens

        yield self._time_to_note(enhancement, now)

    def _due(self, enhancement: Any, now: Any) -> Iterable[Metric]:
        # What a queue-based autoscaler reads (deploy/k8s/components/queue-scaling): work that more workers could
        # start now. A retry waiting out its backoff is not; a retry is due from its next_attempt_at on.
        due = enhancement.objects.filter(
            Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now), status=enhancement.Status.QUEUED
        ).aggregate(n=Count("pk"), since=Min(Coalesce("next_attempt_at", "created_at")))
        depth = GaugeMetricFamily(
            f"{PREFIX}_queue_due", "Queued enhancements that are due (not waiting out a backoff)."
        )
        depth.add_metric([], due["n"])
        yield depth
        age = GaugeMetricFamily(
            f"{PREFIX}_queue_oldest_due_age_seconds",
            "Seconds the oldest due enhancement has waited since it became due (0 when none is due).",
        )
        age.add_metric([], max(0.0, (now - due["since"]).total_seconds()) if due["since"] else 0.0)
        yield age

    def _time_to_note(self, enhancement: Any, now: Any) -> Metric:
        window = settings.METRICS_WINDOW_SECONDS
        histogram = HistogramMetricFamily(
            f"{PREFIX}_time_to_note_seconds",
            f"Seconds from webhook to posted note, over notes posted in the last {window} seconds "
            "(a sliding window: use histogram_quantile on the buckets, not rate()).",
        )
        recent = enhancement.objects.filter(
            status=enhancement.Status.POSTED, posted_at__isnull=False, posted_at__gte=now - timedelta(seconds=window)
        )
        # One aggregate query: a conditional count per bucket bound, already cumulative.
        buckets = {
            f"le_{i}": Count("pk", filter=Q(posted_at__lte=F("created_at") + timedelta(seconds=bound)))
            for i, bound in enumerate(TIME_TO_NOTE_BUCKETS)
        }
        result = recent.aggregate(total=Count("pk"), first_created=Min("created_at"), **buckets)
        total = result["total"]
        # Sum in Python over the window's rows: a duration SUM differs between SQLite and PostgreSQL, and
        # the window bounds the rows read.
        seconds = sum(
            (posted - created).total_seconds() for created, posted in recent.values_list("created_at", "posted_at")
        )
        histogram.add_metric(
            [],
            [*((str(float(b)), result[f"le_{i}"]) for i, b in enumerate(TIME_TO_NOTE_BUCKETS)), ("+Inf", total)],
            seconds,
        )
        return histogram
