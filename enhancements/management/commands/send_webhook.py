"""Send a correctly signed webhook for a tenant to a running server (for demos and checks)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from standardwebhooks.webhooks import Webhook

from tickets.models import Tenant

SAMPLE = Path(settings.BASE_DIR) / "tickets" / "fixtures" / "demo" / "sample_webhook.json"


class Command(BaseCommand):
    help = "POST a signed sample webhook (or --file) for a tenant and print the answer."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--file", type=Path, default=SAMPLE, help="JSON body to send")
        parser.add_argument("--url", default=settings.PUBLIC_BASE_URL, help="Server base URL")
        parser.add_argument("--new-id", action="store_true", default=True, help="Give the request a fresh id (default)")
        parser.add_argument("--keep-id", dest="new_id", action="store_false", help="Send the file's request id")

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = Tenant.objects.filter(slug=options["slug"]).first()
        if tenant is None:
            raise CommandError(f"No tenant {options['slug']!r}.")
        payload = json.loads(options["file"].read_text(encoding="utf-8"))
        if options["new_id"]:
            payload.setdefault("request", {})["id"] = str(int(time.time() * 1000) % 10**9)
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if tenant.webhook_auth == Tenant.WebhookAuth.TOKEN:
            headers["X-ServiceDesk-Token"] = tenant.webhook_secret
        else:
            msg_id = f"msg_{uuid.uuid4().hex}"
            now = time.time()
            signature = Webhook(tenant.webhook_secret).sign(msg_id, datetime.fromtimestamp(now, tz=UTC), body.decode())
            headers.update({"webhook-id": msg_id, "webhook-timestamp": str(int(now)), "webhook-signature": signature})
        url = f"{options['url'].rstrip('/')}/webhook/servicedesk/{tenant.slug}/"
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                status, text = response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read().decode()
        except urllib.error.URLError as exc:
            raise CommandError(f"Could not reach {url}: {exc.reason}. Is `make run` running?") from exc
        self.stdout.write(f"POST {url} -> {status} {text}")
