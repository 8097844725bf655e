"""import_tickets: the resolved and closed requests of a tenant's ServiceDesk Plus, resumable."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from django.db import transaction
from django.utils import timezone

from project.retry import backoff_delay
from tickets.imports.report import ImportReport
from tickets.models import Tenant, Ticket, TicketImport
from tickets.sdp.auth import servicedesk_client
from tickets.sdp.client import ServiceDeskError
from tickets.sdp.mapping import sdp_ms, sdp_time, ticket_fields_from_sdp
from tickets.services import ticket_bulk_upsert

logger = logging.getLogger(__name__)
T = TypeVar("T")

PAGE_SIZE = 100
# Attempts of one SDP call at the import level, on top of the client's own short retries: an import may wait
# out a throttling window that a webhook-time call must not.
MAX_ATTEMPTS = 6
MAX_WAIT = 120.0


@dataclass
class TicketImportReport(ImportReport):
    """An ImportReport for one import_tickets run, with its window and whether it resumed an earlier run."""

    since: datetime | None = None
    until: datetime | None = None
    resumed_from: datetime | None = None


def _patiently(call: Callable[[], T], *, what: str, backoff_base: float) -> T:
    """Return call(), retrying transient SDP failures with backoff (layer 3 of project/retry.py); raise the last one."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            return call()
        except ServiceDeskError as exc:
            if exc.permanent or attempt == MAX_ATTEMPTS:
                raise
            wait = exc.retry_after if exc.retry_after is not None else backoff_delay(attempt, base=backoff_base, cap=60)
            wait = min(wait, MAX_WAIT)
            logger.warning("SDP %s failed (%s); attempt %d, waiting %.1fs", what, exc, attempt, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def ticket_import_window(*, tenant: Tenant, since: datetime, until: datetime, restart: bool = False) -> TicketImport:
    """Return the import run to work on: the tenant's unfinished one (to continue it) unless restart, else a new one."""
    if not restart:
        unfinished = TicketImport.objects.filter(tenant=tenant, finished_at__isnull=True).first()
        if unfinished is not None:
            return unfinished
    TicketImport.objects.filter(tenant=tenant, finished_at__isnull=True).update(finished_at=timezone.now())
    return TicketImport.objects.create(tenant=tenant, since=since, until=until)


def ticket_import_from_sdp(
    *,
    tenant: Tenant,
    since: datetime,
    until: datetime,
    restart: bool = False,
    progress: Callable[[int, int | None], None] | None = None,
    backoff_base: float = 1.0,
) -> TicketImportReport:
    """Import the tenant's requests resolved or closed between since and until from its SDP; return the report.

    Pages through the list API sorted by resolution time, fetches each request for what the list leaves out
    (description, resolution), upserts every page in bulk and then records how far it got, so that a run that
    stops (Ctrl-C, an outage) continues from the last complete page when started again. `progress(done, total)`
    is called after every page. Raises ServiceDeskError when SDP keeps failing (the progress so far is kept).
    """
    run = ticket_import_window(tenant=tenant, since=since, until=until, restart=restart)
    report = TicketImportReport(since=run.since, until=run.until, resumed_from=run.resolved_through)
    start = run.resolved_through or run.since
    criteria = [
        {"field": "status.name", "condition": "is", "values": list(Ticket.RESOLVED_STATUSES)},
        {
            "field": "resolved_time",
            "condition": "between",
            "values": [sdp_ms(start), sdp_ms(run.until)],
            "logical_operator": "AND",
        },
    ]
    client = servicedesk_client(tenant=tenant, backoff_base=backoff_base)
    done = 0
    with client:
        start_index = 1
        while True:
            page = _patiently(
                functools.partial(
                    client.list_requests,
                    start_index=start_index,
                    row_count=PAGE_SIZE,
                    search_criteria=criteria,
                    sort_field="resolved_time",
                    sort_order="asc",
                ),
                what=f"list from row {start_index}",
                backoff_base=backoff_base,
            )
            items: list[tuple[str, dict[str, Any]]] = []
            raws: dict[str, dict[str, Any]] = {}
            last_resolved: datetime | None = None
            for row in page.rows:
                sdp_id = str(row.get("id") or "").strip()
                if not sdp_id:
                    report.skip(f"row {start_index + len(items)}", "no id: the list returned a request without an id")
                    continue
                try:
                    request = _patiently(
                        functools.partial(client.get_request, sdp_id),
                        what=f"get request {sdp_id}",
                        backoff_base=backoff_base,
                    )
                except ServiceDeskError as exc:
                    if not exc.permanent:
                        raise
                    report.skip(f"request {sdp_id}", f"not readable: {exc}")
                    continue
                fields = ticket_fields_from_sdp(request)
                if not fields.get("is_resolved"):
                    report.skip(f"request {sdp_id}", f"no longer resolved: its status is now {fields.get('status')!r}")
                    continue
                items.append((sdp_id, fields))
                raws[sdp_id] = request
                last_resolved = sdp_time(row.get("resolved_time") or request.get("resolved_time")) or last_resolved
            with transaction.atomic():
                result = ticket_bulk_upsert(tenant=tenant, items=items, source=Ticket.Source.IMPORT)
                report.created += len(result.created)
                report.updated += len(result.updated)
                report.unchanged += len(result.unchanged)
                # The resume point moves only after the whole page is stored, in the same transaction.
                if last_resolved is not None:
                    run.resolved_through = last_resolved
                run.created, run.updated = run.created + len(result.created), run.updated + len(result.updated)
                run.unchanged += len(result.unchanged)
                run.skipped = report.skipped
                run.save()
            done += len(page.rows)
            if progress:
                progress(done, page.total_count)
            if not page.has_more_rows or not page.rows:
                break
            start_index = page.start_index + page.row_count
    run.finished_at = timezone.now()
    run.save(update_fields=["finished_at", "updated_at"])
    return report
