"""The generated resolved history bench/ingest.py and bench/search.py COPY into tickets_ticket: columns, one row."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

COLUMNS = (
    "tenant_id, sdp_id, subject, description, status, priority, category, requester_name, requester_email,"
    " technician, resolution, sdp_created_at, resolved_at, source, is_resolved, raw, created_at, updated_at,"
    " embedding, embedding_code, embedding_model, embedding_dim, language"
)


def history_row(
    *,
    tenant_id: int,
    sdp_id: str,
    subject: str,
    description: str,
    category: str,
    resolution: str,
    created: datetime,
    embedded: Any = None,
    language: str = "",
) -> tuple[Any, ...]:
    """Return one imported, resolved ticket in COLUMNS' order; `embedded` (an embeddings item) or no embedding."""
    embedding = (
        (None, None, "", None)
        if embedded is None
        else (embedded.vector, "".join(f"{b:08b}" for b in embedded.code), embedded.model, embedded.dim)
    )
    return (
        tenant_id, sdp_id, subject, description, "Closed", "Medium", category, "Bench User", "user@example.com",
        "Bench Tech", resolution, created, created + timedelta(hours=3), "import", True, "{}", created, created,
        *embedding, language,
    )  # fmt: skip
