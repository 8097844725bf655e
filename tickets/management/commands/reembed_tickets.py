"""reembed_tickets <slug>|--all: embed the history with the configured model (after a model change, a backfill)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from tickets import embeddings
from tickets.indexing import ticket_embed_pending, ticket_embed_pending_count
from tickets.models import Tenant


class Command(BaseCommand):
    help = (
        "Embed the resolved tickets of a tenant (or of all tenants) that have no embedding or one made by another "
        "model than EMBEDDINGS_PROVIDER/EMBEDDINGS_MODEL. Each batch is committed: an interrupted run continues "
        "where it stopped, and a second run finds nothing to do."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", nargs="?", help="the tenant's slug")
        parser.add_argument("--all", action="store_true", help="every tenant")
        parser.add_argument("--batch-size", type=int, default=256, help="tickets per embedding call and commit")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def handle(self, *args: Any, **options: Any) -> None:
        if bool(options["slug"]) == bool(options["all"]):
            raise CommandError("Give a tenant slug or --all (not both).")
        if options["batch_size"] <= 0:
            raise CommandError("--batch-size must be positive.")
        model = embeddings.current_model()
        if not model:
            raise CommandError("Embeddings are off (EMBEDDINGS_PROVIDER=off): nothing to embed with.")
        tenant = None
        if options["slug"]:
            tenant = Tenant.objects.filter(slug=options["slug"]).first()
            if tenant is None:
                raise CommandError(f"No tenant with slug {options['slug']!r}.")
        total = ticket_embed_pending_count(tenant=tenant)
        where = tenant.slug if tenant else "all tenants"
        bar = tqdm(
            total=total, unit="ticket", desc=f"embed {where}", file=self.stderr._out, disable=options["no_progress"]
        )
        try:
            done = ticket_embed_pending(tenant=tenant, batch_size=options["batch_size"], progress=bar.update)
        except embeddings.EmbeddingError as exc:
            bar.close()
            raise CommandError(
                f"Embedding failed after {bar.n} of {total} tickets ({exc}); what was embedded is kept, "
                "run the command again to continue."
            ) from exc
        bar.close()
        self.stdout.write(f"Embedded {done} tickets of {where} with {model} ({total - done} left).")
