"""The semantic window's incremental read finds the rows written since its last read (tickets/search/window.py).

Every search reads the window rows of its tenant with `updated_at` at or after its previous read's start (less a
margin): a range scan of this index, usually no row. Before, it read the rows resolved after the newest one held,
which missed a ticket embedded after a later-resolved one until the full re-read. About 30 bytes a window row.
"""

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class AddIndexConcurrentlyOnPostgres(AddIndexConcurrently):
    """CREATE INDEX CONCURRENTLY on PostgreSQL, so writes go on during the build; a plain index elsewhere."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):  # type: ignore[no-untyped-def]
        if schema_editor.connection.vendor == "postgresql":
            super().database_forwards(app_label, schema_editor, from_state, to_state)
        else:
            migrations.AddIndex.database_forwards(self, app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):  # type: ignore[no-untyped-def]
        if schema_editor.connection.vendor == "postgresql":
            super().database_backwards(app_label, schema_editor, from_state, to_state)
        else:
            migrations.AddIndex.database_backwards(self, app_label, schema_editor, from_state, to_state)


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [
        ("tickets", "0012_ticket_search_document_resolved_only"),
    ]

    operations = [
        AddIndexConcurrentlyOnPostgres(
            model_name="ticket",
            index=models.Index(
                condition=models.Q(("embedding_code__isnull", False), ("is_resolved", True)),
                fields=["tenant", "updated_at"],
                name="ticket_window_written",
            ),
        ),
    ]
