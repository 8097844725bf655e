"""The lexical search's document stays right through every writer of tickets.

On PostgreSQL `search_document` is kept by triggers (migration 0012): the weighted tsvector of subject,
description and resolution for a resolved ticket, NULL for any other. On SQLite the FTS5 index of 0002 plays that
part. Each test writes through one of the project's writers and checks the document against the text stored.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection

from tickets.history import ticket_store_resolved
from tickets.indexing import ticket_embed_pending
from tickets.models import Ticket
from tickets.services import ticket_bulk_upsert, ticket_merge_webhook

pytestmark = pytest.mark.django_db

_EXPECTED = """
    CASE WHEN is_resolved THEN
        setweight(to_tsvector('english'::regconfig, coalesce(subject, '')), 'A')
        || setweight(to_tsvector('english'::regconfig, coalesce(description, '')), 'B')
        || setweight(to_tsvector('english'::regconfig, coalesce(resolution, '')), 'C')
    END
"""


def _indexed(ticket_id: int, word: str) -> bool:
    """Return whether the ticket's stored document holds word (after checking it is the text's document)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"SELECT search_document IS NOT DISTINCT FROM ({_EXPECTED}),"  # noqa: S608 - a constant expression
                " coalesce(search_document @@ plainto_tsquery('english', %s), false)"
                " FROM tickets_ticket WHERE id = %s",
                [word, ticket_id],
            )
            current, found = cursor.fetchone()
            assert current, "the stored search_document is not the document of the stored text"
            return bool(found)
        cursor.execute(
            "SELECT count(*) FROM tickets_ticket_fts WHERE tickets_ticket_fts MATCH %s AND rowid = %s",
            [word, ticket_id],
        )
        return cursor.fetchone()[0] == 1


def _resolved_request(sdp_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": sdp_id,
        "subject": fields.get("subject", "Printer jams on tray two"),
        "description": fields.get("description", "The office device stops whenever tray two is used."),
        "status": {"name": "Resolved"},
        "resolution": {"content": fields.get("resolution", "Replaced the pickup roller of tray two.")},
    }


def test_an_open_ticket_has_no_document_and_gets_one_when_resolved(make_tenant):
    tenant = make_tenant().tenant
    ticket = Ticket.objects.create(tenant=tenant, sdp_id="1", subject="Scanner offline", description="Says offline")
    assert not _indexed(ticket.pk, "scanner")

    resolved = ticket_store_resolved(tenant=tenant, request=_resolved_request("1", resolution="Rebooted the scanner"))
    assert resolved.pk == ticket.pk
    assert _indexed(ticket.pk, "rebooted")
    assert _indexed(ticket.pk, "printer")  # the resolved event's subject replaced the open ticket's


def test_a_webhook_merge_into_a_resolved_ticket_updates_its_document(make_tenant):
    tenant = make_tenant().tenant
    ticket = ticket_store_resolved(tenant=tenant, request=_resolved_request("2"))
    assert _indexed(ticket.pk, "printer")

    changed = ticket_merge_webhook(ticket=ticket, request={"id": "2", "subject": "Plotter smears ink"})
    assert changed == ["subject"]
    assert _indexed(ticket.pk, "plotter")
    assert not _indexed(ticket.pk, "printer")


def test_an_import_creates_and_updates_documents(make_tenant):
    tenant = make_tenant().tenant
    fields = {"subject": "Laptop battery swells", "description": "Bulging case", "is_resolved": True}
    ticket_bulk_upsert(
        tenant=tenant,
        items=[("3", {**fields, "resolution": "Battery replaced"}), ("4", {**fields, "is_resolved": False})],
        source=Ticket.Source.IMPORT,
    )
    resolved, still_open = Ticket.objects.get(sdp_id="3"), Ticket.objects.get(sdp_id="4")
    assert _indexed(resolved.pk, "battery")
    assert not _indexed(still_open.pk, "battery")

    # A second import of the same tickets: new text for the resolved one, the open one resolved.
    ticket_bulk_upsert(
        tenant=tenant,
        items=[("3", {**fields, "resolution": "Warranty exchange"}), ("4", {**fields, "resolution": "Recycled"})],
        source=Ticket.Source.IMPORT,
    )
    assert _indexed(resolved.pk, "warranty")
    assert not _indexed(resolved.pk, "replaced")
    assert _indexed(still_open.pk, "recycled")


def test_re_embedding_keeps_the_document(make_tenant):
    tenant = make_tenant().tenant
    ticket = ticket_store_resolved(tenant=tenant, request=_resolved_request("5"))
    Ticket.objects.filter(pk=ticket.pk).update(embedding_model="an-older-model")

    assert ticket_embed_pending(tenant=tenant) == 1
    ticket.refresh_from_db()
    assert ticket.embedding_model != "an-older-model"
    assert _indexed(ticket.pk, "roller")


def test_a_full_save_and_a_queryset_update_keep_the_document(make_tenant):
    tenant = make_tenant().tenant
    ticket = ticket_store_resolved(tenant=tenant, request=_resolved_request("6"))
    # What the admin's change form does: a full save of the edited instance.
    ticket.resolution = "Cleaned the fuser"
    ticket.save()
    assert _indexed(ticket.pk, "fuser")
    assert not _indexed(ticket.pk, "roller")

    Ticket.objects.filter(pk=ticket.pk).update(description="Streaks on every page")
    assert _indexed(ticket.pk, "streaks")

    # Reopened: out of the history; resolved again: back in, with the current text.
    Ticket.objects.filter(pk=ticket.pk).update(is_resolved=False)
    assert not _indexed(ticket.pk, "fuser")
    Ticket.objects.filter(pk=ticket.pk).update(is_resolved=True, subject="Toner low")
    assert _indexed(ticket.pk, "toner")
    assert _indexed(ticket.pk, "fuser")


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the column and its triggers are PostgreSQL's")
def test_a_document_written_directly_is_replaced_by_the_texts(make_tenant):
    tenant = make_tenant().tenant
    ticket = ticket_store_resolved(tenant=tenant, request=_resolved_request("7"))
    opened = Ticket.objects.create(tenant=tenant, sdp_id="8", subject="Open one")
    with connection.cursor() as cursor:
        cursor.execute("UPDATE tickets_ticket SET search_document = to_tsvector('english', 'bogus')")
        cursor.execute(
            "INSERT INTO tickets_ticket (tenant_id, sdp_id, subject, description, status, priority, category,"
            " requester_name, requester_email, technician, resolution, source, is_resolved, raw, language,"
            " embedding_model, created_at, updated_at, search_document) SELECT tenant_id, '9', subject, description,"
            " status, priority, category, requester_name, requester_email, technician, resolution, source, false,"
            " raw, language, embedding_model, created_at, updated_at, to_tsvector('english', 'bogus')"
            " FROM tickets_ticket WHERE id = %s",
            [ticket.pk],
        )
    copied = Ticket.objects.get(sdp_id="9")
    for pk in (ticket.pk, opened.pk, copied.pk):
        assert not _indexed(pk, "bogus")
    assert _indexed(ticket.pk, "printer")
