"""import_assets: the tenant's inventory from a CSV file (ip,hostname,role,location,owner,notes)."""

from __future__ import annotations

import csv
import ipaddress
import re
from pathlib import Path

from tickets.imports.report import ImportReport, open_csv
from tickets.models import Asset, Tenant, field_max_lengths
from tickets.services import asset_upsert

ASSET_COLUMNS = ("ip", "hostname", "role", "location", "owner", "notes")
_ASSET_LIMITS = field_max_lengths(Asset)
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def _hostname_error(hostname: str) -> str | None:
    if len(hostname) > 253:
        return "hostname longer than 253 characters"
    if not all(_LABEL.match(label) for label in hostname.split(".")):
        return f"invalid hostname {hostname!r} (letters, digits and '-' in dot-separated labels)"
    return None


def asset_import_csv(*, tenant: Tenant, path: Path) -> ImportReport:
    """Validate every row of an assets CSV and import the good ones into the tenant's inventory; return the report."""
    report = ImportReport()
    with path.open(newline="", encoding="utf-8-sig") as handle:
        header = [h.strip().lower() for h in next(csv.reader(handle), [])]
    if "ip" not in header and "hostname" not in header:
        report.skip("line 1", f"no ip or hostname column: the header must name columns of {', '.join(ASSET_COLUMNS)}")
        return report
    seen: dict[str, int] = {}
    for line, row in open_csv(path=path):
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
