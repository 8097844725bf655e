"""Full-text search over resolved tickets: a weighted tsvector on PostgreSQL, FTS5 on SQLite.

Both live outside the ORM model (the model stays portable) and are kept current by the database itself:
a STORED generated column on PostgreSQL, triggers on SQLite. Caveats for later migrations:
- PostgreSQL refuses to change the type of subject/description/resolution while the generated column uses them;
  drop and re-create `search_document` around such a change.
- On SQLite, Django rebuilds a table (copy, drop, rename) for most AlterField/RemoveField operations on it, which
  drops these triggers; re-run `SQLITE_TRIGGERS` after such a migration (tests/test_search.py notices when an
  index falls behind).
"""

from __future__ import annotations

from django.db import migrations

PG_FORWARD = [
    """
    ALTER TABLE tickets_ticket ADD COLUMN search_document tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english'::regconfig, coalesce(subject, '')), 'A')
        || setweight(to_tsvector('english'::regconfig, coalesce(description, '')), 'B')
        || setweight(to_tsvector('english'::regconfig, coalesce(resolution, '')), 'C')
    ) STORED
    """,
    # The index keys are the document's lexemes qualified by the tenant ("42:printer"), so a search reads only its
    # tenant's postings: with one shared GIN index, a lexeme's postings span every tenant and a search over one
    # tenant of a million-ticket table would read ten times what it needs.
    """
    CREATE FUNCTION tickets_search_keys(tenant bigint, document tsvector) RETURNS tsvector
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
        SELECT array_to_tsvector(
            array(SELECT tenant::text || ':' || lexeme FROM unnest(tsvector_to_array(document)) AS lexeme)
        )
    $$
    """,
    # Only the searchable history is indexed. A smaller pending list (default 4 MB) bounds what every search
    # scans linearly between two flushes of freshly inserted tickets.
    """
    CREATE INDEX tickets_ticket_search_keys ON tickets_ticket
    USING gin (tickets_search_keys(tenant_id, search_document)) WITH (gin_pending_list_limit = 1024)
    WHERE is_resolved
    """,
    # A larger sample keeps many more lexeme frequencies in pg_stats, which search.py reads as document
    # frequencies on big tables (most_common_elems holds up to 10 x the target).
    "ALTER TABLE tickets_ticket ALTER COLUMN search_document SET STATISTICS 1000",
    # A search scores about a thousand candidate rows; the planner sometimes hands that to parallel workers whose
    # start-up costs more than the work (bench/search.py saw its p95 at 1M tickets go parallel and take several
    # times the median). Nothing else reads enough of this table to gain from them.
    "ALTER TABLE tickets_ticket SET (parallel_workers = 0)",
]
PG_BACKWARD = [
    "ALTER TABLE tickets_ticket RESET (parallel_workers)",
    "DROP INDEX IF EXISTS tickets_ticket_search_keys",
    "ALTER TABLE tickets_ticket DROP COLUMN IF EXISTS search_document",
    "DROP FUNCTION IF EXISTS tickets_search_keys(bigint, tsvector)",
]

SQLITE_TRIGGERS = [
    """
    CREATE TRIGGER IF NOT EXISTS tickets_ticket_fts_insert AFTER INSERT ON tickets_ticket WHEN new.is_resolved
    BEGIN
        INSERT INTO tickets_ticket_fts (rowid, subject, description, resolution)
        VALUES (new.id, new.subject, new.description, new.resolution);
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS tickets_ticket_fts_delete AFTER DELETE ON tickets_ticket WHEN old.is_resolved
    BEGIN
        INSERT INTO tickets_ticket_fts (tickets_ticket_fts, rowid, subject, description, resolution)
        VALUES ('delete', old.id, old.subject, old.description, old.resolution);
    END
    """,
    # An external-content FTS5 table must be told the old values to remove them, then the new ones.
    """
    CREATE TRIGGER IF NOT EXISTS tickets_ticket_fts_update
    AFTER UPDATE OF subject, description, resolution, is_resolved ON tickets_ticket
    BEGIN
        INSERT INTO tickets_ticket_fts (tickets_ticket_fts, rowid, subject, description, resolution)
        SELECT 'delete', old.id, old.subject, old.description, old.resolution WHERE old.is_resolved;
        INSERT INTO tickets_ticket_fts (rowid, subject, description, resolution)
        SELECT new.id, new.subject, new.description, new.resolution WHERE new.is_resolved;
    END
    """,
]
SQLITE_FORWARD = [
    """
    CREATE VIRTUAL TABLE IF NOT EXISTS tickets_ticket_fts USING fts5(
        subject, description, resolution,
        content='tickets_ticket', content_rowid='id',
        tokenize='porter unicode61 remove_diacritics 2'
    )
    """,
    *SQLITE_TRIGGERS,
    """
    INSERT INTO tickets_ticket_fts (rowid, subject, description, resolution)
    SELECT id, subject, description, resolution FROM tickets_ticket WHERE is_resolved
    """,
]
SQLITE_BACKWARD = [
    "DROP TRIGGER IF EXISTS tickets_ticket_fts_insert",
    "DROP TRIGGER IF EXISTS tickets_ticket_fts_delete",
    "DROP TRIGGER IF EXISTS tickets_ticket_fts_update",
    "DROP TABLE IF EXISTS tickets_ticket_fts",
]


def _run(statements: dict[str, list[str]]):
    def run(apps, schema_editor) -> None:
        for sql in statements.get(schema_editor.connection.vendor, []):
            schema_editor.execute(sql)

    return run


class Migration(migrations.Migration):
    dependencies = [("tickets", "0001_initial")]

    operations = [
        migrations.RunPython(
            _run({"postgresql": PG_FORWARD, "sqlite": SQLITE_FORWARD}),
            _run({"postgresql": PG_BACKWARD, "sqlite": SQLITE_BACKWARD}),
        ),
    ]
