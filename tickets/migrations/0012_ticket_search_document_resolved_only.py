"""The search document is computed for resolved tickets only, and the ticket's tenant index covered twice is gone.

`search_document` was a STORED generated column: PostgreSQL ran to_tsvector over subject, description and
resolution for every insert and every update of every ticket, although only resolved tickets are searched (the
GIN index is `WHERE is_resolved` and every search reads `WHERE is_resolved`). A new webhook ticket is never
resolved, so each webhook paid for a document nobody could read (docs/benchmarks.md, "Webhook load"). It is now a
plain column that BEFORE INSERT/UPDATE triggers keep equal to the same expression for a resolved ticket and NULL
for any other; the triggers' WHEN clauses are evaluated without calling the function, so an open ticket's insert,
and an update that changes neither the text nor is_resolved, cost nothing. Every writer (the ORM, QuerySet.update,
bulk_create, COPY) goes through them, as it went through the generated column.

The btree index on tenant_id that Django made for the foreign key is covered by ticket_unique_per_tenant
(tenant_id, sdp_id) and ticket_tenant_resolved (tenant_id, is_resolved): one index less on every insert. On
SQLite that AlterField rebuilds the table, which drops the FTS5 triggers of 0002: they are re-created here.
"""

from __future__ import annotations

import importlib

from django.db import migrations, models

from tickets.migrations import _search_sql

_initial = importlib.import_module("tickets.migrations.0002_ticket_search_index")

DOCUMENT = """
    setweight(to_tsvector('english'::regconfig, coalesce(NEW.subject, '')), 'A')
    || setweight(to_tsvector('english'::regconfig, coalesce(NEW.description, '')), 'B')
    || setweight(to_tsvector('english'::regconfig, coalesce(NEW.resolution, '')), 'C')
"""

PG_FORWARD = [
    # Keeps every stored value; no table rewrite.
    "ALTER TABLE tickets_ticket ALTER COLUMN search_document DROP EXPRESSION",
    f"""
    CREATE FUNCTION tickets_ticket_search_document() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.is_resolved THEN
            NEW.search_document := {DOCUMENT};
        ELSE
            NEW.search_document := NULL;
        END IF;
        RETURN NEW;
    END
    $$
    """,
    # A value written into the column directly is replaced too, so it always holds what the expression gives.
    """
    CREATE TRIGGER tickets_ticket_search_document_insert BEFORE INSERT ON tickets_ticket FOR EACH ROW
    WHEN (NEW.is_resolved OR NEW.search_document IS NOT NULL)
    EXECUTE FUNCTION tickets_ticket_search_document()
    """,
    """
    CREATE TRIGGER tickets_ticket_search_document_update BEFORE UPDATE ON tickets_ticket FOR EACH ROW
    WHEN (
        NEW.is_resolved IS DISTINCT FROM OLD.is_resolved
        OR NEW.search_document IS DISTINCT FROM OLD.search_document
        OR (NEW.is_resolved AND (
            NEW.subject IS DISTINCT FROM OLD.subject
            OR NEW.description IS DISTINCT FROM OLD.description
            OR NEW.resolution IS DISTINCT FROM OLD.resolution
        ))
    )
    EXECUTE FUNCTION tickets_ticket_search_document()
    """,
    # Open tickets' documents were never read; clearing them keeps the planner statistics of the column (which
    # search reads as document frequencies) to the searchable history. Open tickets are the few rows.
    "UPDATE tickets_ticket SET search_document = NULL WHERE NOT is_resolved AND search_document IS NOT NULL",
]
PG_BACKWARD = [
    "DROP TRIGGER IF EXISTS tickets_ticket_search_document_update ON tickets_ticket",
    "DROP TRIGGER IF EXISTS tickets_ticket_search_document_insert ON tickets_ticket",
    "DROP FUNCTION IF EXISTS tickets_ticket_search_document()",
    "DROP INDEX IF EXISTS tickets_ticket_search_keys",
    "ALTER TABLE tickets_ticket DROP COLUMN IF EXISTS search_document",
    _initial.PG_FORWARD[0],  # the generated column
    _initial.PG_FORWARD[2],  # its index
    _initial.PG_FORWARD[3],  # its statistics target
]


class Migration(migrations.Migration):
    dependencies = [
        ("tickets", "0011_ticket_embedding_window"),
    ]

    operations = [
        migrations.RunPython(_search_sql.run({"postgresql": PG_FORWARD}), _search_sql.run({"postgresql": PG_BACKWARD})),
        # Reversed, the AlterField below rebuilds the SQLite table again (dropping the FTS5 triggers): this step's
        # reverse runs after it and re-creates them.
        migrations.RunPython(migrations.RunPython.noop, _search_sql.run({"sqlite": _search_sql.SQLITE_TRIGGERS})),
        migrations.AlterField(
            model_name="ticket",
            name="tenant",
            field=models.ForeignKey(
                db_index=False,
                on_delete=models.deletion.CASCADE,
                related_name="tickets",
                to="tickets.tenant",
            ),
        ),
        migrations.RunPython(_search_sql.run({"sqlite": _search_sql.SQLITE_TRIGGERS}), migrations.RunPython.noop),
    ]
