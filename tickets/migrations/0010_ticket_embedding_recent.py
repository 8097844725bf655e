"""The semantic search scans a tenant's most recently resolved codes: a covering index in that order (PostgreSQL).

It replaces 0007's index on (tenant_id, embedding_model) INCLUDE (id, embedding_code), whose scan read every code
of the tenant (100,000 at 1M tickets over 10 tenants: 19 ms). No-op on SQLite.
"""

from django.db import migrations

from tickets.migrations import _search_sql

PG_FORWARD = [
    "CREATE INDEX IF NOT EXISTS tickets_ticket_embedding_recent ON tickets_ticket"
    " (tenant_id, embedding_model, resolved_at DESC NULLS LAST, id DESC) INCLUDE (embedding_code)"
    " WHERE is_resolved AND embedding_code IS NOT NULL",
    "DROP INDEX IF EXISTS tickets_ticket_embedding_code",
]
PG_BACKWARD = [
    "CREATE INDEX IF NOT EXISTS tickets_ticket_embedding_code ON tickets_ticket (tenant_id, embedding_model)"
    " INCLUDE (id, embedding_code) WHERE is_resolved AND embedding_code IS NOT NULL",
    "DROP INDEX IF EXISTS tickets_ticket_embedding_recent",
]


class Migration(migrations.Migration):
    dependencies = [
        ("tickets", "0009_tenant_llm_budget_llmusage"),
    ]

    operations = [
        migrations.RunPython(
            _search_sql.run({"postgresql": PG_FORWARD}),
            _search_sql.run({"postgresql": PG_BACKWARD}),
        ),
    ]
