"""The enhancement pipeline's intake: store a webhook's ticket and its queued enhancement, re-run, enqueue.

Processing an enhancement (claim, stages, post, retry, fail) lives in `processing`, the sweep in `sweep`.
"""

from __future__ import annotations

import functools
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.db import DEFAULT_DB_ALIAS, IntegrityError, connections, transaction
from django.db.models import Q
from django.utils import timezone

from enhancements.models import Enhancement
from enhancements.services.pushing import BatchPusher
from enhancements.webhook_fastpath import StaleTenant, store_new_ticket
from tickets.models import Tenant, Ticket
from tickets.sdp.mapping import ticket_fields_from_sdp
from tickets.services import ticket_merge_webhook

if TYPE_CHECKING:
    from django_q.brokers import Broker

logger = logging.getLogger(__name__)

TASK_PROCESS = "enhancements.tasks.process_enhancement"


@dataclass(frozen=True)
class WebhookOutcome:
    """What the webhook did with a request_created event."""

    enhancement_id: str
    duplicate: bool


# --- enqueueing -------------------------------------------------------------------------------
@functools.cache
def _broker() -> Broker:
    """Return this process's task broker, created once so every enqueue reuses its connections."""
    from django_q.brokers import get_broker

    # async_task builds a new broker, hence a new Redis connection, on every call unless given one: one
    # TCP connection (left in TIME_WAIT) per webhook, which runs out of ports at a few hundred per second.
    return get_broker()


def _package(*, func: str, arg: str, name: str) -> bytes:
    """Return the signed package of one task, as django_q's async_task would build it, without its per-call
    work the webhook does not need.

    The package is the one the cluster reads: the same task dict (id, name, func, args, kwargs, started and the
    configured ack_failure), signed and pickled by django_q's own SignedPackage. What is left out is
    async_task's humanhash of the id (the name is given), its INFO "Enqueued" line per call and the kwargs
    juggling: about a third of the webhook's enqueue CPU (docs/benchmarks.md, "Webhook load")."""
    from django_q.conf import Conf
    from django_q.signals import pre_enqueue
    from django_q.signing import SignedPackage

    task: dict[str, Any] = {"id": uuid.uuid4().hex, "name": name, "func": func, "args": (arg,)}
    if Conf.ACK_FAILURES:
        task["ack_failure"] = Conf.ACK_FAILURES
    task["kwargs"] = {}
    task["started"] = timezone.now()
    pre_enqueue.send(sender="django_q", task=task)
    return SignedPackage.dumps(task)


def _push(*, enhancement_ids: list[str]) -> None:
    """Push the enhancements' tasks: with the Redis broker in one round trip (one RPUSH of every package), with
    another broker one enqueue each. With Q_SYNC or a result cache configured, async_task itself runs (tests,
    development)."""
    from django_q.brokers.redis_broker import Redis as RedisBroker
    from django_q.conf import Conf

    if Conf.SYNC or Conf.CACHED:
        from django_q.tasks import async_task

        for pk in enhancement_ids:
            async_task(TASK_PROCESS, pk, task_name=f"enhance-{pk}", broker=_broker())
        return
    packages = [_package(func=TASK_PROCESS, arg=pk, name=f"enhance-{pk}") for pk in enhancement_ids]
    broker = _broker()
    if isinstance(broker, RedisBroker):
        broker.connection.rpush(broker.list_key, *packages)
        return
    for package in packages:
        broker.enqueue(package)


def enhancement_enqueue_many(*, enhancement_ids: list[str]) -> int:
    """Hand the enhancements to the task queue (one round trip with Redis); return how many were handed over:
    all, or none on failure, when they are left to the sweep."""
    try:
        _push(enhancement_ids=[str(pk) for pk in enhancement_ids])
        return len(enhancement_ids)
    except Exception:
        # The row is the truth: a broker outage must not lose or fail the webhook. The sweep
        # enqueues rows whose enqueued_at is empty.
        logger.exception("could not enqueue enhancements %s; the sweep will pick them up", ", ".join(enhancement_ids))
        Enhancement.objects.filter(pk__in=enhancement_ids, status=Enhancement.Status.QUEUED).update(enqueued_at=None)
        return 0


def enhancement_enqueue(*, enhancement_id: str) -> bool:
    """Hand the enhancement to the task queue; return False (and leave it to the sweep) on failure."""
    return enhancement_enqueue_many(enhancement_ids=[str(enhancement_id)]) == 1


def _push_batch(enhancement_ids: list[str]) -> bool:
    return enhancement_enqueue_many(enhancement_ids=enhancement_ids) == len(enhancement_ids)


def _leave_to_the_sweep(enhancement_ids: list[str]) -> None:
    """After a failed push: the ids queued meanwhile are not tried one batch at a time, each waiting out the
    broker's timeout, but left to the sweep in one UPDATE."""
    logger.warning("broker unavailable: %d more enhancements left to the sweep", len(enhancement_ids))
    Enhancement.objects.filter(pk__in=enhancement_ids, status=Enhancement.Status.QUEUED).update(enqueued_at=None)


_PUSHER = BatchPusher(name="enhancement-pusher", send=_push_batch, give_up=_leave_to_the_sweep)


def enhancement_enqueue_soon(*, enhancement_id: str) -> None:
    """Hand a committed enhancement to the task queue from this process's pusher thread (with Q_SYNC: now)."""
    from django_q.conf import Conf

    if Conf.SYNC:
        enhancement_enqueue(enhancement_id=enhancement_id)
        return
    _PUSHER.submit(str(enhancement_id))


# --- creation ---------------------------------------------------------------------------------
def webhook_fast_path_available() -> bool:
    """Return whether a new ticket is stored with one statement here (PostgreSQL, outside a transaction)."""
    conn = connections[DEFAULT_DB_ALIAS]  # not django.db.connection: a proxy that looks it up on every attribute
    return conn.vendor == "postgresql" and not conn.in_atomic_block


def enhancement_create_from_webhook(
    *,
    tenant: Tenant,
    request: dict[str, Any],
    delivery_id: str | None,
    request_id: str = "",
    tenant_guard: dict[str, Any] | None = None,
) -> WebhookOutcome:
    """Store the ticket and a queued Enhancement in one transaction; enqueue after commit.

    With tenant_guard (a cached tenant's stored column values, tickets/tenant_cache.py) only a new ticket stored
    by the one statement, while the tenant's row still holds those values, is answered; anything else raises
    StaleTenant before anything is written, and the caller starts over with the tenant read again."""
    sdp_id = str(request["id"])
    if tenant_guard is not None and not webhook_fast_path_available():
        raise StaleTenant("the guarded store needs the one-statement path")
    try:
        if webhook_fast_path_available():
            # One statement for the common case, a new ticket (enhancements/webhook_fastpath.py).
            pk = store_new_ticket(
                ticket={
                    "tenant_id": tenant.pk,
                    "sdp_id": sdp_id,
                    "source": Ticket.Source.WEBHOOK,
                    "raw": request,
                    **ticket_fields_from_sdp(request),
                },
                enhancement={
                    "tenant_id": tenant.pk,
                    "delivery_id": delivery_id or None,
                    "request_id": request_id[:64],
                    "enqueued_at": timezone.now(),
                },
                tenant_guard=tenant_guard,
            )
            if pk is None and tenant_guard is not None:
                raise StaleTenant("the tenant changed, or the ticket exists")
            if pk is not None:
                # Pushed by the process's pusher thread, with whatever else has come in meanwhile: the request
                # thread answers without a broker round trip of its own (enhancements/services/pushing.py).
                enhancement_enqueue_soon(enhancement_id=pk)
                return WebhookOutcome(enhancement_id=pk, duplicate=False)
        with transaction.atomic():
            ticket = Ticket.objects.filter(tenant=tenant, sdp_id=sdp_id).first()
            if ticket is None:
                # Plain INSERTs, no savepoints or look-ups first: a concurrent delivery of the same request,
                # or a reused delivery id, breaks a unique constraint, the transaction rolls back whole,
                # and the handler below answers "duplicate".
                ticket = Ticket.objects.create(
                    tenant=tenant,
                    sdp_id=sdp_id,
                    source=Ticket.Source.WEBHOOK,
                    raw=request,
                    **ticket_fields_from_sdp(request),
                )
            else:
                existing = Enhancement.objects.filter(ticket=ticket, trigger=Enhancement.Trigger.WEBHOOK)
                earlier = existing.values_list("pk", flat=True).first()
                if earlier:
                    return WebhookOutcome(enhancement_id=str(earlier), duplicate=True)
                ticket_merge_webhook(ticket=ticket, request=request)
            enhancement = Enhancement.objects.create(
                tenant=tenant,
                ticket=ticket,
                delivery_id=delivery_id or None,
                request_id=request_id[:64],
                enqueued_at=timezone.now(),
            )
            transaction.on_commit(lambda: enhancement_enqueue(enhancement_id=str(enhancement.pk)))
    except IntegrityError:
        if tenant_guard is not None:
            raise StaleTenant("a duplicate is answered with the tenant read again") from None
        # A reused delivery id, or a concurrent delivery of the same request that won the race.
        found = None
        if delivery_id:
            found = (
                Enhancement.objects.filter(tenant=tenant, delivery_id=delivery_id).values_list("pk", flat=True).first()
            )
        if found is None:
            same = Q(tenant=tenant, ticket__sdp_id=sdp_id, trigger=Enhancement.Trigger.WEBHOOK)
            found = Enhancement.objects.filter(same).values_list("pk", flat=True).first()
        if found is None:
            raise
        return WebhookOutcome(enhancement_id=str(found), duplicate=True)
    return WebhookOutcome(enhancement_id=str(enhancement.pk), duplicate=False)


def enhancement_rerun(*, enhancement: Enhancement) -> Enhancement:
    """Create a new queued Enhancement for the same ticket (history is kept) and enqueue it."""
    with transaction.atomic():
        new = Enhancement.objects.create(
            tenant=enhancement.tenant,
            ticket=enhancement.ticket,
            trigger=Enhancement.Trigger.RERUN,
            enqueued_at=timezone.now(),
        )
        transaction.on_commit(lambda: enhancement_enqueue(enhancement_id=str(new.pk)))
    return new
