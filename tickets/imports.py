"""Bulk imports: resolved tickets from a tenant's ServiceDesk Plus, assets from CSV, articles from files or CSV.

Every import validates each record, imports the good ones, reports the bad ones with where they are and why,
and is idempotent: running it again creates nothing twice.
"""

from __future__ import annotations

import csv
import functools
import ipaddress
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, TypeVar

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import transaction
from django.utils import timezone

from project.retry import backoff_delay
from tickets.models import Asset, KnowledgeArticle, Tenant, Ticket, TicketImport, field_max_lengths
from tickets.sdp.auth import servicedesk_client
from tickets.sdp.client import ServiceDeskError
from tickets.sdp.mapping import sdp_ms, sdp_time, ticket_fields_from_sdp
from tickets.services import article_upsert, asset_upsert, ticket_bulk_upsert
from tickets.text import html_to_text

logger = logging.getLogger(__name__)
T = TypeVar("T")

PAGE_SIZE = 100
# Attempts of one SDP call at the import level, on top of the client's own short retries: an import may wait
# out a throttling window that a webhook-time call must not.
MAX_ATTEMPTS = 6
MAX_WAIT = 120.0


@dataclass
class ImportReport:
    """What an import did: counts, and every skipped or rejected record with where it is and why."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        """Return how many records were not imported."""
        return len(self.problems)

    def skip(self, where: str, reason: str) -> None:
        """Record a record that was not imported."""
        self.problems.append((where, reason))

    def reasons(self) -> Counter[str]:
        """Return how often each reason occurred (its text without the record's own details)."""
        return Counter(reason.split(":", 1)[0] for _, reason in self.problems)

    def summary(self) -> str:
        """Return the one-line summary a command prints."""
        return f"{self.created} new, {self.updated} updated, {self.unchanged} unchanged, {self.skipped} skipped"


# --- tickets from ServiceDesk Plus ------------------------------------------------------------------------------
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


def tickets_import_from_sdp(
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


# --- assets from CSV ---------------------------------------------------------------------------------------------
ASSET_COLUMNS = ("ip", "hostname", "role", "location", "owner", "notes")
_ASSET_LIMITS = field_max_lengths(Asset)
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def _hostname_error(hostname: str) -> str | None:
    if len(hostname) > 253:
        return "hostname longer than 253 characters"
    if not all(_LABEL.match(label) for label in hostname.split(".")):
        return f"invalid hostname {hostname!r} (letters, digits and '-' in dot-separated labels)"
    return None


def _open_csv(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, row) for every record of a UTF-8 CSV file with a header (line 1)."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []  # reads line 1
        reader.fieldnames = [(name or "").strip().lower() for name in header]
        line = reader.line_num + 1
        for row in reader:
            yield line, {k: (v or "").strip() for k, v in row.items() if isinstance(k, str)}
            line = reader.line_num + 1


def assets_import_csv(*, tenant: Tenant, path: Path) -> ImportReport:
    """Validate every row of an assets CSV and import the good ones into the tenant's inventory; return the report."""
    report = ImportReport()
    with path.open(newline="", encoding="utf-8-sig") as handle:
        header = [h.strip().lower() for h in next(csv.reader(handle), [])]
    if "ip" not in header and "hostname" not in header:
        report.skip("line 1", f"no ip or hostname column: the header must name columns of {', '.join(ASSET_COLUMNS)}")
        return report
    seen: dict[str, int] = {}
    for line, row in _open_csv(path):
        where = f"line {line}"
        values = {column: row.get(column, "") for column in ASSET_COLUMNS}
        values["hostname"] = values["hostname"].lower().rstrip(".")
        errors = []
        if not values["ip"] and not values["hostname"]:
            errors.append("no hostname or IP: a row needs at least one")
        if values["ip"]:
            try:
                values["ip"] = str(ipaddress.ip_address(values["ip"]))
            except ValueError:
                errors.append(f"invalid IP: {values['ip']!r} is not an IPv4 or IPv6 address")
        if values["hostname"] and (problem := _hostname_error(values["hostname"])):
            errors.append(f"invalid hostname: {problem}")
        for column in ("role", "location", "owner"):
            if len(values[column]) > _ASSET_LIMITS[column]:
                errors.append(f"{column} too long: {len(values[column])} characters, at most {_ASSET_LIMITS[column]}")
        if errors:
            report.skip(where, "; ".join(errors))
            continue
        key = values["hostname"] or values["ip"]
        if key in seen:
            report.skip(where, f"duplicate: the same asset as line {seen[key]}")
            continue
        seen[key] = line
        owner_of_ip = (
            Asset.objects.filter(tenant=tenant, ip=values["ip"]).exclude(hostname=values["hostname"]).first()
            if values["ip"] and values["hostname"]
            else None
        )
        if owner_of_ip is not None:
            report.skip(where, f"IP in use: {values['ip']} already belongs to {owner_of_ip}")
            continue
        lookup = {"hostname": values["hostname"]} if values["hostname"] else {"ip": values["ip"]}
        before = Asset.objects.filter(tenant=tenant, **lookup).values(*ASSET_COLUMNS).first()
        asset, created = asset_upsert(
            tenant=tenant,
            ip=values["ip"] or None,
            hostname=values["hostname"],
            role=values["role"],
            location=values["location"],
            owner=values["owner"],
            notes=values["notes"],
        )
        if created:
            report.created += 1
        elif before == {c: getattr(asset, c) for c in ASSET_COLUMNS}:
            report.unchanged += 1
        else:
            report.updated += 1
    return report


# --- knowledge articles from Markdown/HTML files or CSV ---------------------------------------------------------
ARTICLE_SUFFIXES = (".md", ".markdown", ".html", ".htm")
_ARTICLE_LIMITS = field_max_lengths(KnowledgeArticle)
_url = URLValidator(schemes=["http", "https"])


@dataclass
class ArticleRecord:
    """One article read from a file or a CSV record, before validation."""

    where: str
    title: str
    url: str = ""
    body: str = ""
    tags: str = ""


def _markdown_article(path: Path) -> ArticleRecord:
    """Read `# Title`, then optional `Tags:` and `URL:` lines, then the body."""
    record = ArticleRecord(where=path.name, title="")
    body: list[str] = []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        stripped = line.strip()
        if not body and not record.title and stripped.startswith("# "):
            record.title = stripped[2:].strip()
        elif not body and stripped.lower().startswith("tags:"):
            record.tags = stripped.split(":", 1)[1].strip()
        elif not body and stripped.lower().startswith("url:"):
            record.url = stripped.split(":", 1)[1].strip()
        elif stripped or body:
            body.append(line)
    record.body = "\n".join(body).strip()
    return record


class _HtmlHead(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.h1 = ""
        self.url = ""
        self.keywords = ""
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag in ("title", "h1"):
            self._in = tag
        elif tag == "link" and values.get("rel", "").lower() == "canonical":
            self.url = values.get("href", "")
        elif tag == "meta" and values.get("name", "").lower() == "keywords":
            self.keywords = values.get("content", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == self._in:
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "title":
            self.title += data
        elif self._in == "h1":
            self.h1 += data


def _html_article(path: Path) -> ArticleRecord:
    """Read the title (<title>, else <h1>), canonical URL, keywords and the page text."""
    html = path.read_text(encoding="utf-8-sig")
    head = _HtmlHead()
    head.feed(html)
    return ArticleRecord(
        where=path.name,
        title=" ".join((head.title or head.h1).split()),
        url=head.url.strip(),
        body=html_to_text(html),
        tags=head.keywords.strip(),
    )


def _article_records(path: Path) -> Iterator[ArticleRecord]:
    if path.is_dir():
        for file in sorted(path.iterdir()):
            if file.suffix.lower() in (".md", ".markdown"):
                yield _markdown_article(file)
            elif file.suffix.lower() in (".html", ".htm"):
                yield _html_article(file)
        return
    for line, row in _open_csv(path):
        yield ArticleRecord(
            where=f"line {line}",
            title=row.get("title", ""),
            url=row.get("url", ""),
            body=row.get("body", ""),
            tags=row.get("tags", ""),
        )


def articles_import(*, tenant: Tenant, path: Path) -> ImportReport:
    """Validate and import knowledge articles from a folder of Markdown/HTML files or a CSV; return the report."""
    report = ImportReport()
    if path.is_file() and path.suffix.lower() != ".csv":
        report.skip(path.name, "not a CSV: give a folder of .md/.html files or a .csv file")
        return report
    seen: dict[str, str] = {}
    for record in _article_records(path):
        errors = []
        title = " ".join(record.title.split())
        if not title:
            errors.append("no title: an article needs one")
        elif len(title) > _ARTICLE_LIMITS["title"]:
            errors.append(f"title too long: {len(title)} characters, at most {_ARTICLE_LIMITS['title']}")
        if record.url:
            try:
                _url(record.url)
            except ValidationError:
                errors.append(f"invalid URL: {record.url!r}")
            if len(record.url) > _ARTICLE_LIMITS["url"]:
                errors.append(f"URL too long: at most {_ARTICLE_LIMITS['url']} characters")
        if len(record.tags) > _ARTICLE_LIMITS["tags"]:
            errors.append(f"tags too long: at most {_ARTICLE_LIMITS['tags']} characters")
        if not record.body.strip():
            errors.append("no body: the article is empty")
        if errors:
            report.skip(record.where, "; ".join(errors))
            continue
        if title.lower() in seen:
            report.skip(record.where, f"duplicate: the same title as {seen[title.lower()]}")
            continue
        seen[title.lower()] = record.where
        before = KnowledgeArticle.objects.filter(tenant=tenant, title=title).values("url", "body", "tags").first()
        _, created = article_upsert(tenant=tenant, title=title, url=record.url, body=record.body, tags=record.tags)
        if created:
            report.created += 1
        elif before == {"url": record.url, "body": record.body, "tags": record.tags}:
            report.unchanged += 1
        else:
            report.updated += 1
    return report
