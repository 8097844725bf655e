"""Django-Q entry points of the outage clusters: ids only, each calls a service."""

from __future__ import annotations

from clusters import services


def post_followup(candidate_id: int) -> str:
    """Post one cluster follow-up note; return its status."""
    return services.followup_post(candidate_id=candidate_id)
