"""Create or update a tenant and print its webhook URL and secret (once)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from tickets.models import Tenant
from tickets.sdp.client import ServiceDeskError
from tickets.services import tenant_create_or_update, webhook_secret_decode, webhook_url_build


def _amount(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """Return an argparse type: "default", or a number of `kind` that is not negative."""

    def parse(text: str) -> Any:
        if text.strip().lower() == "default":
            return "default"
        try:
            value = kind(text)
        except (ValueError, InvalidOperation):
            raise argparse.ArgumentTypeError(f"{text!r} is not a number or 'default'") from None
        if not value >= 0 or (isinstance(value, Decimal) and not value.is_finite()):
            raise argparse.ArgumentTypeError(f"{text!r} must not be negative (0 = unlimited)")
        return value

    return parse


class Command(BaseCommand):
    help = "Create a tenant (or update the given fields of an existing one) and print its webhook URL and secret."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help="Short name used in the webhook URL, e.g. acme")
        parser.add_argument("--name", help="Display name")
        parser.add_argument("--sdp-url", help="SDP base URL, e.g. https://sdp.acme.com or https://.../app/itdesk")
        parser.add_argument("--sdp-api-key", help="SDP technician API key (on-prem) or OAuth access token (cloud)")
        parser.add_argument("--sdp-auth-type", choices=[c.value for c in Tenant.AuthType], help="default authtoken")
        parser.add_argument("--webhook-auth", choices=[c.value for c in Tenant.WebhookAuth], help="default hmac")
        zoho = parser.add_argument_group("SDP Cloud token renewal (access tokens expire after about an hour)")
        zoho.add_argument("--zoho-accounts-url", help="e.g. https://accounts.zoho.eu (default .com)")
        zoho.add_argument("--zoho-client-id")
        zoho.add_argument("--zoho-client-secret")
        zoho.add_argument("--zoho-refresh-token")
        storms = parser.add_argument_group("Outage clusters and refreshed notes")
        storms.add_argument("--cluster-window", type=int, dest="cluster_window_minutes", help="minutes (default 30)")
        storms.add_argument("--cluster-threshold", type=int, help="tickets that make a cluster (default 3)")
        storms.add_argument(
            "--refresh-interval", type=int, dest="refresh_interval_minutes", help="minutes between updated notes"
        )
        parser.add_argument("--note-language", help="language of LLM notes, ISO 639-1 (default en)")
        budget = parser.add_argument_group("Daily AI budget (docs/security.md, denial of wallet)")
        budget.add_argument(
            "--daily-token-budget",
            type=_amount(int),
            help="tokens per day for LLM calls; 0 = unlimited; 'default' = LLM_DAILY_TOKEN_BUDGET",
        )
        budget.add_argument(
            "--daily-cost-cap",
            type=_amount(Decimal),
            help="estimated cost per day (LLM_PRICES); 0 = no cap; 'default' = LLM_DAILY_COST_CAP",
        )
        parser.add_argument("--webhook-secret", help="Use this secret instead of generating one")
        parser.add_argument("--rotate-secret", action="store_true", help="Generate a new webhook secret")
        review = parser.add_mutually_exclusive_group()
        review.add_argument("--review-required", action="store_true", default=None)
        review.add_argument("--no-review-required", dest="review_required", action="store_false")
        enabled = parser.add_mutually_exclusive_group()
        enabled.add_argument("--enable", dest="enabled", action="store_true", default=None)
        enabled.add_argument("--disable", dest="enabled", action="store_false")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            result = tenant_create_or_update(
                slug=options["slug"],
                name=options["name"],
                sdp_base_url=options["sdp_url"],
                sdp_api_key=options["sdp_api_key"],
                sdp_auth_type=options["sdp_auth_type"],
                webhook_auth=options["webhook_auth"],
                webhook_secret=options["webhook_secret"],
                review_required=options["review_required"],
                enabled=options["enabled"],
                rotate_secret=options["rotate_secret"],
                zoho_accounts_url=options["zoho_accounts_url"],
                zoho_client_id=options["zoho_client_id"],
                zoho_client_secret=options["zoho_client_secret"],
                zoho_refresh_token=options["zoho_refresh_token"],
                cluster_window_minutes=options["cluster_window_minutes"],
                cluster_threshold=options["cluster_threshold"],
                refresh_interval_minutes=options["refresh_interval_minutes"],
                note_language=options["note_language"],
                llm_daily_token_budget=options["daily_token_budget"],
                llm_daily_cost_cap=options["daily_cost_cap"],
            )
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from exc
        except ServiceDeskError as exc:
            raise CommandError(str(exc)) from exc
        tenant = result.tenant
        self.stdout.write(f"Tenant {tenant.slug} {'created' if result.created else 'updated'}.")
        self.stdout.write(f"Webhook URL:  {webhook_url_build(tenant=tenant)}")
        self.stdout.write(f"Webhook auth: {tenant.webhook_auth}")
        if result.secret:
            self.stdout.write(f"Webhook secret (shown once, store it now): {result.secret}")
            if tenant.webhook_auth == Tenant.WebhookAuth.HMAC:
                key = webhook_secret_decode(secret=result.secret)
                self.stdout.write(f"Signing key for an SDP Deluge function: {key}")
            else:
                self.stdout.write("Send it in the X-ServiceDesk-Token header of the SDP webhook.")
        else:
            self.stdout.write("Webhook secret unchanged (use --rotate-secret to issue a new one).")
        if tenant.sdp_auth_type == Tenant.AuthType.ZOHO_OAUTH and not tenant.can_refresh_token:
            self.stdout.write(
                "SDP Cloud without a Zoho refresh token: the access token expires in about an hour; add "
                "--zoho-client-id, --zoho-client-secret and --zoho-refresh-token so it is renewed."
            )
        if not tenant.has_sdp_credentials:
            self.stdout.write("No SDP credentials: enhancements are kept here (dry run), not posted.")
