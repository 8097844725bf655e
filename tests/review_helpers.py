"""Helpers shared by the admin, API, permission and browser tests: reviewers and enhancements to review."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib.auth.models import Group, User
from django.utils import timezone

from enhancements.models import Enhancement
from enhancements.render import note_render
from enhancements.roles import OPERATOR, SUPPORT_LEAD, roles_sync
from tickets.models import Tenant, Ticket

PASSWORD = "a-long-test-password-9"


def staff_user(username: str, *groups: str, superuser: bool = False, password: str | None = None) -> User:
    """Return a staff user in the given groups (the groups are re-synced first: a flush drops them)."""
    roles_sync()
    # No password unless a test logs in through the form: hashing one costs a second.
    user = User.objects.create_user(username, f"{username}@example.com", password, is_staff=True)
    if superuser:
        user.is_superuser = True
        user.save()
    for name in groups:
        user.groups.add(Group.objects.get(name=name))
    return user


def support_lead(username: str = "lead", password: str | None = None) -> User:
    """Return a user in the Support lead group."""
    return staff_user(username, SUPPORT_LEAD, password=password)


def operator(username: str = "operator") -> User:
    """Return a user in the Operator group."""
    return staff_user(username, OPERATOR)


def enhancement_make(
    tenant: Tenant,
    *,
    sdp_id: str = "104321",
    subject: str = "Outlook keeps asking for the password",
    description: str = "Since this morning Outlook prompts for the password again and again.",
    status: str = Enhancement.Status.AWAITING_REVIEW,
    created_at: Any = None,
    **fields: Any,
) -> Enhancement:
    """Return an enhancement with a rendered note, as the pipeline leaves it (created directly, for speed)."""
    ticket, _ = Ticket.objects.get_or_create(
        tenant=tenant, sdp_id=sdp_id, defaults={"subject": subject, "description": description}
    )
    context = {
        "similar_tickets": [
            {
                "sdp_id": "98765",
                "subject": "Outlook password loop after MFA change",
                "score": 0.8123,
                "resolution": "Cleared Credential Manager and re-created the Outlook profile.",
            }
        ],
        "assets": [{"hostname": "lt-0457", "ip": "10.20.4.57", "role": "Laptop", "location": "HQ", "owner": "Dana"}],
        "articles": [{"title": "Resetting Outlook profiles", "url": "https://kb.example.com/outlook", "score": 0.5}],
    }
    output = {
        "summary": "Outlook is looping on the password prompt after an MFA change.",
        "probable_causes": ["Stale cached credentials"],
        "suggested_steps": ["Clear Credential Manager entries for Office"],
        "related_tickets": ["98765"],
        "confidence": 0.7,
    }
    values: dict[str, Any] = {
        "provider": "offline",
        "model": "",
        "prompt_tokens": 120,
        "completion_tokens": 80,
        "attempts": 1,
        "timings": {"load": 3, "context": 12, "generate": 40, "render": 1},
        "context": context,
        "output": output,
        "started_at": timezone.now(),
        **fields,
    }
    enhancement = Enhancement.objects.create(
        tenant=tenant, ticket=ticket, status=status, trigger=Enhancement.Trigger.RERUN, **values
    )
    if "note_html" not in fields:
        enhancement.note_html = note_render(
            tenant=tenant,
            enhancement_id=str(enhancement.pk),
            output=output,
            context=context,
            provider="offline",
            model="",
        )
        enhancement.save(update_fields=["note_html"])
    if created_at is not None:
        Enhancement.objects.filter(pk=enhancement.pk).update(created_at=created_at)
        enhancement.refresh_from_db()
    return enhancement


def days_ago(days: float) -> Any:
    """Return the time `days` days ago."""
    return timezone.now() - timedelta(days=days)
