"""Business logic of the ServiceDesk side: tenants and tickets."""

from __future__ import annotations

import base64
import json
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.utils import timezone

from tickets import indexing
from tickets.models import Asset, KnowledgeArticle, Tenant, Ticket
from tickets.sdp.auth import servicedesk_client
from tickets.sdp.client import check_base_url
from tickets.sdp.mapping import ticket_fields_from_sdp
from tickets.tenant_cache import tenant_cache_forget


# --- tenants ----------------------------------------------------------------------------------
def webhook_secret_generate(*, auth: str) -> str:
    """Return a new webhook secret for the given auth mode."""
    if auth == Tenant.WebhookAuth.HMAC:
        # The decoded key is printable ASCII so an SDP Deluge function can use it as a string key.
        alphabet = string.ascii_letters + string.digits
        key = "".join(secrets.choice(alphabet) for _ in range(32))
        return "whsec_" + base64.b64encode(key.encode()).decode()
    return secrets.token_urlsafe(32)


def webhook_secret_decode(*, secret: str) -> str:
    """Return the printable signing key inside a `whsec_` secret (what a Deluge function needs)."""
    return base64.b64decode(secret.removeprefix("whsec_") + "==").decode("ascii", errors="replace")


# Given for a per-tenant setting, clears it so the deployment's default applies.
USE_DEFAULT = "default"


@dataclass(frozen=True)
class TenantResult:
    """The outcome of tenant_create_or_update: the tenant and the secret when it was (re)set."""

    tenant: Tenant
    created: bool
    secret: str | None


def tenant_create_or_update(
    *,
    slug: str,
    name: str | None = None,
    sdp_base_url: str | None = None,
    sdp_api_key: str | None = None,
    sdp_auth_type: str | None = None,
    webhook_auth: str | None = None,
    webhook_secret: str | None = None,
    review_required: bool | None = None,
    enabled: bool | None = None,
    rotate_secret: bool = False,
    llm_model: str | None = None,
    rate_limit_per_minute: int | None = None,
    zoho_accounts_url: str | None = None,
    zoho_client_id: str | None = None,
    zoho_client_secret: str | None = None,
    zoho_refresh_token: str | None = None,
    cluster_window_minutes: int | None = None,
    cluster_threshold: int | None = None,
    refresh_interval_minutes: int | None = None,
    vip_requesters: str | None = None,
    note_language: str | None = None,
    llm_daily_token_budget: int | str | None = None,
    llm_daily_cost_cap: Decimal | str | None = None,
) -> TenantResult:
    """Create the tenant, or update only the given fields of an existing one."""
    for url in (sdp_base_url, zoho_accounts_url):
        if url:
            check_base_url(url, resolve=False)
    tenant = Tenant.objects.filter(slug=slug).first()
    created = tenant is None
    if tenant is None:
        tenant = Tenant(slug=slug, name=name or slug)
    updates = {
        "name": name,
        "sdp_base_url": sdp_base_url,
        "sdp_api_key": sdp_api_key,
        "sdp_auth_type": sdp_auth_type,
        "webhook_auth": webhook_auth,
        "review_required": review_required,
        "enabled": enabled,
        "llm_model": llm_model,
        "rate_limit_per_minute": rate_limit_per_minute,
        "zoho_accounts_url": zoho_accounts_url,
        "zoho_client_id": zoho_client_id,
        "zoho_client_secret": zoho_client_secret,
        "zoho_refresh_token": zoho_refresh_token,
        "cluster_window_minutes": cluster_window_minutes,
        "cluster_threshold": cluster_threshold,
        "refresh_interval_minutes": refresh_interval_minutes,
        "vip_requesters": vip_requesters,
        "note_language": note_language.strip().lower() if note_language else None,
    }
    for field, value in updates.items():
        if value is not None:
            setattr(tenant, field, value)
    # The daily AI budget: None leaves it, "default" clears it (the deployment's default applies), 0 = unlimited.
    if llm_daily_token_budget is not None:
        tokens = None if llm_daily_token_budget == USE_DEFAULT else int(llm_daily_token_budget)
        tenant.llm_daily_token_budget = tokens
    if llm_daily_cost_cap is not None:
        tenant.llm_daily_cost_cap = None if llm_daily_cost_cap == USE_DEFAULT else Decimal(llm_daily_cost_cap)
    if sdp_api_key is not None or zoho_refresh_token is not None:
        tenant.sdp_token_expires_at = None  # a changed credential is renewed before its next use
    new_secret = None
    if webhook_secret:
        new_secret = webhook_secret
    elif created or rotate_secret or (webhook_auth and webhook_auth != _stored_auth(tenant)):
        new_secret = webhook_secret_generate(auth=tenant.webhook_auth)
    if new_secret:
        tenant.webhook_secret = new_secret
    tenant.full_clean()
    tenant.save()
    tenant_cache_forget(slug=slug)  # this process's webhook cache; other processes' is checked at every use
    return TenantResult(tenant=tenant, created=created, secret=new_secret)


def _stored_auth(tenant: Tenant) -> str | None:
    if tenant.pk is None:
        return None
    return Tenant.objects.filter(pk=tenant.pk).values_list("webhook_auth", flat=True).first()


def webhook_url_build(*, tenant: Tenant) -> str:
    """Return the URL to configure in the tenant's SDP."""
    return f"{settings.PUBLIC_BASE_URL.rstrip('/')}/webhook/servicedesk/{tenant.slug}/"


# --- tickets ----------------------------------------------------------------------------------
def _changed_fields(stored: Ticket | Mapping[str, Any], fields: Mapping[str, Any], *, blanks: bool = True) -> list[str]:
    """Return the names of the fields whose value differs from the stored ticket's (or stored row's).

    The one rule for "which fields changed", used by every write of tickets; with blanks=False an empty
    value changes nothing (a minimal webhook must not erase what an earlier one or the SDP API told us).
    """
    if isinstance(stored, Ticket):
        stored = {key: getattr(stored, key) for key in fields}
    return [k for k, v in fields.items() if (blanks or v not in ("", None)) and stored.get(k) != v]


def ticket_upsert(
    *, tenant: Tenant, sdp_id: str, fields: dict[str, Any], source: str, raw: dict[str, Any] | None = None
) -> tuple[Ticket, bool]:
    """Create or update the tenant's ticket sdp_id with the given fields; return (ticket, created)."""
    defaults = dict(fields, source=source)
    if raw is not None:
        defaults["raw"] = raw
    with transaction.atomic():
        ticket, created = Ticket.objects.select_for_update().get_or_create(
            tenant=tenant, sdp_id=sdp_id, defaults=defaults
        )
        if not created:
            changed = _changed_fields(ticket, defaults)
            if {"subject", "description"} & set(changed) and ticket.embedding_model:
                # The text changed: the stored embedding no longer says what the ticket is (the sweep re-embeds).
                defaults.update(indexing.CLEARED)
                changed += [*indexing.CLEARED]
            for key in changed:
                setattr(ticket, key, defaults[key])
            if changed:
                ticket.save(update_fields=[*changed, "updated_at"])
    return ticket, created


def ticket_refresh_from_sdp(*, ticket: Ticket) -> Ticket:
    """Fetch the ticket from the tenant's SDP and store what it says; return the ticket."""
    with servicedesk_client(tenant=ticket.tenant) as client:
        request = client.get_request(ticket.sdp_id)
    ticket, _ = ticket_upsert(
        tenant=ticket.tenant,
        sdp_id=ticket.sdp_id,
        fields=ticket_fields_from_sdp(request),
        source=ticket.source,
        raw=request,
    )
    return ticket


def ticket_merge_webhook(*, ticket: Ticket, request: dict[str, Any]) -> list[str]:
    """Store what a repeated webhook says about a known ticket (blanks erase nothing); return the changed fields."""
    fields = ticket_fields_from_sdp(request)
    changed = _changed_fields(ticket, fields, blanks=False)
    for key in changed:
        setattr(ticket, key, fields[key])
    if changed:
        ticket.raw = request
        ticket.save(update_fields=[*changed, "raw", "updated_at"])
    return changed


# --- inventory and knowledge ------------------------------------------------------------------
def asset_upsert(
    *,
    tenant: Tenant,
    ip: str | None,
    hostname: str,
    role: str = "",
    location: str = "",
    owner: str = "",
    notes: str = "",
) -> tuple[Asset, bool]:
    """Create or update the tenant's asset identified by hostname (else IP); return (asset, created)."""
    hostname = hostname.strip().lower().rstrip(".")
    ip = ip or None
    lookup = {"hostname": hostname} if hostname else {"ip": ip}
    return Asset.objects.update_or_create(
        tenant=tenant,
        **lookup,
        defaults={"ip": ip, "hostname": hostname, "role": role, "location": location, "owner": owner, "notes": notes},
    )


def article_upsert(
    *, tenant: Tenant, title: str, url: str = "", body: str = "", tags: str = ""
) -> tuple[KnowledgeArticle, bool]:
    """Create or update the tenant's article with this title; return (article, created)."""
    return KnowledgeArticle.objects.update_or_create(
        tenant=tenant, title=title.strip(), defaults={"url": url, "body": body, "tags": tags}
    )


@dataclass(frozen=True)
class BulkResult:
    """What ticket_bulk_upsert did: sdp ids created, updated and left unchanged."""

    created: list[str]
    updated: list[str]
    unchanged: list[str]


_BULK_FIELDS = [
    f.name for f in Ticket._meta.concrete_fields if f.name not in ("id", "tenant", "sdp_id", "created_at", "updated_at")
]


def ticket_bulk_upsert(
    *, tenant: Tenant, items: list[tuple[str, dict[str, Any]]], source: str, batch_size: int = 500
) -> BulkResult:
    """Create or update many of the tenant's tickets at once from (sdp_id, fields) pairs; return what changed."""
    created: list[str] = []
    updated: list[str] = []
    unchanged: list[str] = []
    latest = dict(items)  # the last version of an sdp id in the batch wins
    for start in range(0, len(latest), batch_size):
        chunk = list(latest.items())[start : start + batch_size]
        fields_in_chunk = sorted({key for _, fields in chunk for key in fields} | {"source"})
        stored = {
            row["sdp_id"]: row
            for row in Ticket.objects.filter(tenant=tenant, sdp_id__in=[sdp_id for sdp_id, _ in chunk]).values(
                "sdp_id", "embedding_model", *fields_in_chunk
            )
        }
        to_write: list[Ticket] = []
        for sdp_id, fields in chunk:
            values = dict(fields, source=source)
            old = stored.get(sdp_id)
            if old is None:
                created.append(sdp_id)
            elif not _changed_fields(old, values):
                unchanged.append(sdp_id)
                continue
            else:
                updated.append(sdp_id)
                # Keep what this import does not know (e.g. a raw payload stored by the webhook).
                values = {**{k: v for k, v in old.items() if k not in ("sdp_id", "embedding_model")}, **values}
            to_write.append(Ticket(tenant=tenant, sdp_id=sdp_id, **values))
        if not to_write:
            continue
        # Language and embedding are computed here, in the import, never in the webhook's hot path.
        enriched = indexing.ticket_bulk_enrich(tickets=to_write)
        # One INSERT ... ON CONFLICT DO UPDATE per batch; only the columns this batch carries are replaced.
        update_fields = [*(f for f in fields_in_chunk if f in _BULK_FIELDS), *enriched, "updated_at"]
        if connection.vendor == "postgresql":
            _pg_bulk_upsert(to_write, update_fields)
        else:
            Ticket.objects.bulk_create(
                to_write,
                batch_size=batch_size,
                update_conflicts=True,
                unique_fields=["tenant", "sdp_id"],
                update_fields=update_fields,
            )
    return BulkResult(created=created, updated=updated, unchanged=unchanged)


def _pg_bulk_upsert(tickets: list[Ticket], update_fields: list[str]) -> None:
    """INSERT ... SELECT FROM unnest(one array per column) ... ON CONFLICT DO UPDATE: one statement per batch.

    Django's bulk_create spends more time compiling one placeholder per value than PostgreSQL spends storing the
    rows (measured in bench/search.py); column arrays cost the same to send and almost nothing to build.
    """
    now = timezone.now()
    fields = [f for f in Ticket._meta.concrete_fields if not f.primary_key]
    columns, arrays, selects = [], [], []
    for index, field in enumerate(fields):
        if field.name in ("created_at", "updated_at"):
            values: list[Any] = [now] * len(tickets)
        elif field.get_internal_type() == "JSONField":
            values = [json.dumps(getattr(t, field.attname), cls=DjangoJSONEncoder) for t in tickets]
        else:
            values = [field.get_db_prep_save(getattr(t, field.attname), connection) for t in tickets]
        is_json = field.get_internal_type() == "JSONField"
        columns.append(connection.ops.quote_name(field.column or field.attname))
        arrays.append(values)
        selects.append(f"c{index}::jsonb" if is_json else f"c{index}")
    types = [("text" if f.get_internal_type() == "JSONField" else f.db_type(connection)) for f in fields]
    by_name = {f.name: connection.ops.quote_name(f.column or f.attname) for f in fields}
    sql = (
        f"INSERT INTO {Ticket._meta.db_table} ({', '.join(columns)})"  # noqa: S608 - identifiers from the model
        f" SELECT {', '.join(selects)} FROM unnest({', '.join(f'%s::{t}[]' for t in types)})"
        f" AS u({', '.join(f'c{i}' for i in range(len(fields)))})"
        " ON CONFLICT (tenant_id, sdp_id) DO UPDATE SET "
        + ", ".join(f"{by_name[name]} = EXCLUDED.{by_name[name]}" for name in update_fields)
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, arrays)
