"""The tenant's SDP lists (categories, subcategories, priorities, groups, technicians), fetched and cached.

SDP API v3 list endpoints (docs/servicedesk-api.md, "Lists"): `GET /api/v3/categories`, `/subcategories`
(searched by `category.id`), `/priorities`, `/support_groups` (older on-premises builds: `/groups`) and
`/technicians`, paged with `list_info` like requests. The rows are stored as SdpChoice; a value SDP stops
listing is kept inactive (so a lead's group description survives) and is never written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.utils import timezone

from enhancements.triage.models import SdpChoice, TriageField, TriageMode, TriageSetting
from tickets.models import Tenant
from tickets.sdp.auth import servicedesk_client
from tickets.sdp.client import ServiceDeskClient, ServiceDeskError

logger = logging.getLogger(__name__)

Kind = SdpChoice.Kind


@dataclass(frozen=True)
class Row:
    """One fetched list value."""

    kind: str
    sdp_id: str
    name: str
    parent: str = ""
    description: str = ""


def _inactive(row: dict[str, Any]) -> bool:
    status = row.get("status")
    status_name = status.get("name") if isinstance(status, dict) else status
    return bool(row.get("deleted")) or str(status_name or "").upper() in ("INACTIVE", "DISABLED")


def _rows(kind: str, items: list[dict[str, Any]], parent: str = "") -> list[Row]:
    rows = []
    for item in items:
        name = str(item.get("name") or "").strip()
        if not name or item.get("id") in (None, "") or _inactive(item):
            continue
        rows.append(Row(kind=kind, sdp_id=str(item["id"]), name=name[:200], parent=parent[:200]))
    return rows


def _groups(client: ServiceDeskClient) -> list[dict[str, Any]]:
    try:
        return client.list_all("/support_groups", "support_groups")
    except ServiceDeskError as exc:
        if exc.status != 404:
            raise
        # Older on-premises builds list groups under /groups.
        return client.list_all("/groups", "groups")


def choices_fetch(*, tenant: Tenant, technicians: bool | None = None) -> list[Row]:
    """Return the tenant's lists as SDP answers them now. Raises ServiceDeskError."""
    if technicians is None:
        technicians = _technicians_enabled(tenant)
    rows: list[Row] = []
    with servicedesk_client(tenant=tenant) as client:
        categories = _rows(Kind.CATEGORY, client.list_all("/categories", "categories"))
        rows += categories
        for category in categories:
            criteria = [{"field": "category.id", "condition": "is", "values": [category.sdp_id]}]
            subs = client.list_all("/subcategories", "subcategories", search_criteria=criteria)
            rows += _rows(Kind.SUBCATEGORY, subs, parent=category.name)
        rows += _rows(Kind.PRIORITY, client.list_all("/priorities", "priorities"))
        rows += _rows(Kind.GROUP, _groups(client))
        if technicians:
            for item in client.list_all("/technicians", "technicians"):
                groups = item.get("support_groups") or item.get("groups") or []
                names = ", ".join(str(g.get("name")) for g in groups if isinstance(g, dict) and g.get("name"))
                rows += _rows(Kind.TECHNICIAN, [item], parent=names)
    return rows


def _technicians_enabled(tenant: Tenant) -> bool:
    # Technicians are fetched unless the lead turned technician triage off (the default mode is suggest).
    return not TriageSetting.objects.filter(tenant=tenant, field=TriageField.TECHNICIAN, mode=TriageMode.OFF).exists()


@dataclass(frozen=True)
class RefreshResult:
    """What a refresh stored: values per kind now listed, and how many went inactive."""

    counts: dict[str, int]
    deactivated: int

    def sentence(self) -> str:
        """Return a one-line summary for the admin and the command."""
        listed = ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items()))
        return f"Fetched {listed or 'nothing'}; {self.deactivated} no longer listed."


def choices_refresh(*, tenant: Tenant) -> RefreshResult:
    """Fetch the tenant's lists from SDP and store them (no database transaction is open during the calls)."""
    rows = choices_fetch(tenant=tenant)
    now = timezone.now()
    kinds = {row.kind for row in rows} | {Kind.CATEGORY, Kind.SUBCATEGORY, Kind.PRIORITY, Kind.GROUP}
    with transaction.atomic():
        seen: set[tuple[str, str]] = set()
        for row in rows:
            seen.add((row.kind, row.sdp_id))
            SdpChoice.objects.update_or_create(
                tenant=tenant,
                kind=row.kind,
                sdp_id=row.sdp_id,
                defaults={"name": row.name, "parent": row.parent, "active": True, "fetched_at": now},
            )
        stale = [
            pk
            for pk, kind, sdp_id in SdpChoice.objects.filter(tenant=tenant, kind__in=kinds, active=True).values_list(
                "pk", "kind", "sdp_id"
            )
            if (kind, sdp_id) not in seen
        ]
        deactivated = SdpChoice.objects.filter(pk__in=stale).update(active=False)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.kind] = counts.get(row.kind, 0) + 1
    return RefreshResult(counts=counts, deactivated=deactivated)


def choices_refresh_all() -> dict[str, str]:
    """Refresh every enabled tenant with SDP credentials whose triage is not entirely off; return outcomes."""
    outcomes: dict[str, str] = {}
    for tenant in Tenant.objects.filter(enabled=True).exclude(sdp_base_url=""):
        if not tenant.has_sdp_credentials:
            continue
        settings = {s.field: s.mode for s in TriageSetting.objects.filter(tenant=tenant)}
        if settings and all(settings.get(f, TriageMode.SUGGEST) == TriageMode.OFF for f in TriageField.values):
            continue
        try:
            outcomes[tenant.slug] = choices_refresh(tenant=tenant).sentence()
        except ServiceDeskError as exc:
            logger.warning("could not refresh the SDP lists of %s: %s", tenant.slug, exc)
            outcomes[tenant.slug] = f"failed: {exc}"
    return outcomes


@dataclass
class Choices:
    """A tenant's active SDP values by kind, with subcategories by category and group descriptions."""

    names: dict[str, set[str]] = field(default_factory=dict)
    subcategories_of: dict[str, set[str]] = field(default_factory=dict)
    ids: dict[tuple[str, str], str] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)
    technician_groups: dict[str, set[str]] = field(default_factory=dict)

    def has(self, kind: str) -> bool:
        """Return whether SDP listed any value of this kind."""
        return bool(self.names.get(kind))

    def allows(self, kind: str, value: str, *, category: str = "") -> bool:
        """Return whether value is an active value of the kind (a subcategory: under that category)."""
        if kind == Kind.SUBCATEGORY:
            return value in self.subcategories_of.get(category, set())
        return value in self.names.get(kind, set())

    def allowed(self) -> dict[str, set[str] | None]:
        """Return the allowed names per kind for the vote (None where SDP listed nothing: no restriction)."""
        return {kind: (names or None) for kind, names in self.names.items()}


def choices_for(*, tenant: Tenant) -> Choices:
    """Return the tenant's cached active SDP values."""
    result = Choices()
    for kind, sdp_id, name, parent, description in SdpChoice.objects.filter(tenant=tenant, active=True).values_list(
        "kind", "sdp_id", "name", "parent", "description"
    ):
        result.names.setdefault(kind, set()).add(name)
        result.ids[(kind, name if kind != Kind.SUBCATEGORY else f"{parent}\x00{name}")] = sdp_id
        if kind == Kind.SUBCATEGORY:
            result.subcategories_of.setdefault(parent, set()).add(name)
        if kind == Kind.GROUP and description:
            result.descriptions[name] = description
        if kind == Kind.TECHNICIAN:
            result.technician_groups[name] = {g.strip() for g in parent.split(",") if g.strip()}
    return result
