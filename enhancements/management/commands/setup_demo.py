"""Prepare a local demo: a `demo` tenant, sample history and assets, and an admin login."""

from __future__ import annotations

import json
import secrets
from datetime import datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from tickets.imports import article_import, asset_import_csv
from tickets.models import Tenant, Ticket
from tickets.services import tenant_create_or_update, ticket_bulk_upsert, webhook_url_build

DEMO_DIR = Path(settings.BASE_DIR) / "tickets" / "fixtures" / "demo"
PASSWORD_FILE = Path(settings.BASE_DIR) / "var" / "admin-password.txt"


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


class Command(BaseCommand):
    help = "Create the demo tenant, sample history, assets and articles, and an admin login (idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = Tenant.objects.filter(slug="demo").first()
        if tenant is None:
            tenant = tenant_create_or_update(slug="demo", name="Demo MSP customer").tenant
        items = []
        for row in json.loads((DEMO_DIR / "tickets.json").read_text(encoding="utf-8")):
            items.append(
                (
                    str(row["sdp_id"]),
                    {
                        "subject": row["subject"],
                        "description": row.get("description", ""),
                        "status": row.get("status", "Resolved"),
                        "priority": row.get("priority", ""),
                        "category": row.get("category", ""),
                        "requester_name": row.get("requester_name", ""),
                        "requester_email": row.get("requester_email", ""),
                        "technician": row.get("technician", ""),
                        "resolution": row.get("resolution", ""),
                        "sdp_created_at": _when(row.get("created_at")),
                        "resolved_at": _when(row.get("resolved_at")),
                        "is_resolved": True,
                    },
                )
            )
        ticket_bulk_upsert(tenant=tenant, items=items, source=Ticket.Source.IMPORT)
        # The same importers as import_assets / import_articles; the demo files have no bad rows to report.
        asset_import_csv(tenant=tenant, path=DEMO_DIR / "assets.csv")
        article_import(tenant=tenant, path=DEMO_DIR / "articles")

        User = get_user_model()
        if not User.objects.filter(username="admin").exists():
            password = secrets.token_urlsafe(12)
            User.objects.create_superuser("admin", "admin@example.com", password)
            PASSWORD_FILE.parent.mkdir(parents=True, exist_ok=True)
            PASSWORD_FILE.write_text(password + "\n")
            PASSWORD_FILE.chmod(0o600)
        password = PASSWORD_FILE.read_text().strip() if PASSWORD_FILE.exists() else "(set earlier; see changepassword)"

        base = settings.PUBLIC_BASE_URL.rstrip("/")
        self.stdout.write(
            "\n".join(
                [
                    "",
                    "Ticket Enhancer is starting (web on port 8000 + worker).",
                    f"  Admin:          {base}/admin/   login: admin / {password}",
                    f"  Demo webhook:   {webhook_url_build(tenant=tenant)}",
                    f"  Webhook secret: {tenant.webhook_secret}",
                    "  Send a signed sample webhook (in another terminal):",
                    "      .venv/bin/python manage.py send_webhook demo",
                    "  Then watch it reach 'completed' in the admin: " + f"{base}/admin/enhancements/enhancement/",
                    "",
                ]
            )
        )
