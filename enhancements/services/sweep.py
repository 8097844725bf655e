"""The sweep: re-enqueue queued rows that are due or lost, recover running rows whose worker died."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone

from enhancements.models import Enhancement
from enhancements.services.pipeline import _broker, enhancement_enqueue
from enhancements.services.processing import enhancement_fail
from project.logging import log_context

logger = logging.getLogger(__name__)


def _broker_is_empty() -> bool:
    try:
        return _broker().queue_size() == 0
    except Exception:
        logger.warning("sweep: could not read the broker's queue length", exc_info=True)
        return False


def enhancement_sweep(*, limit: int = 500) -> dict[str, int]:
    """Re-enqueue queued rows that are due or lost and recover running rows whose worker died."""
    now = timezone.now()
    stuck_before = now - timedelta(seconds=settings.ENHANCEMENT_STUCK_AFTER)
    # A worker beats for its running rows (enhancements/runner.py): a stale beat is a dead worker, whatever
    # the attempt's age. Rows without a beat (a web process's re-post) wait for ENHANCEMENT_STUCK_AFTER.
    dead_before = now - timedelta(seconds=settings.ENHANCEMENT_DEAD_AFTER)
    running = Enhancement.objects.filter(status=Enhancement.Status.RUNNING)
    stale = running.filter(Q(started_at__lt=stuck_before) | Q(heartbeat_at__lt=dead_before))
    recovered = 0
    for row in stale[:limit]:
        with log_context(enhancement_id=str(row.pk)):
            if row.attempts >= settings.ENHANCEMENT_MAX_ATTEMPTS:
                enhancement_fail(
                    enhancement=row,
                    error=f"The worker stopped responding during attempt {row.attempts} (the last allowed).",
                )
            else:
                # Compare-and-set on the beat too: a worker that beat since the read keeps its row.
                recovered += Enhancement.objects.filter(
                    pk=row.pk,
                    status=Enhancement.Status.RUNNING,
                    started_at=row.started_at,
                    heartbeat_at=row.heartbeat_at,
                ).update(status=Enhancement.Status.QUEUED, next_attempt_at=now, enqueued_at=None)
    lost = Q(enqueued_at__lt=stuck_before)
    if _broker_is_empty():
        # Nothing waits in the broker, so a due row enqueued DEAD_AFTER ago was taken by a worker that died
        # before claiming it (a prefetched task). Enqueueing it again is harmless: the claim runs it once.
        lost |= Q(enqueued_at__lt=dead_before) & (Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
    due = Enhancement.objects.filter(status=Enhancement.Status.QUEUED).filter(
        Q(enqueued_at__isnull=True) | Q(next_attempt_at__lte=now, enqueued_at__lt=F("next_attempt_at")) | lost
    )
    enqueued = 0
    for pk, enqueued_at in due.values_list("pk", "enqueued_at")[:limit]:
        # Only one sweeper enqueues a row: the update succeeds for whoever saw it first.
        if Enhancement.objects.filter(pk=pk, status=Enhancement.Status.QUEUED, enqueued_at=enqueued_at).update(
            enqueued_at=now
        ):
            enqueued += enhancement_enqueue(enhancement_id=str(pk))
    if recovered or enqueued:
        logger.info("sweep: %d running rows recovered, %d rows enqueued", recovered, enqueued)
    return {"recovered": recovered, "enqueued": enqueued}
