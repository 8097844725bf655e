"""Re-encrypt every encrypted field with the primary (first) key of FIELD_ENCRYPTION_KEY."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured, ObjectDoesNotExist
from django.core.management.base import BaseCommand, CommandError
from django.db import models, transaction

from tickets.fields import EncryptedTextField


def encrypted_fields() -> list[tuple[type[models.Model], list[str]]]:
    """Return every concrete model with its encrypted field names."""
    found = []
    for model in apps.get_models():
        names = [f.name for f in model._meta.concrete_fields if isinstance(f, EncryptedTextField)]
        if names and not model._meta.proxy:
            found.append((model, names))
    return found


class Command(BaseCommand):
    help = (
        "Re-encrypt every encrypted field with the first key of FIELD_ENCRYPTION_KEY. Put the new key first and "
        "keep the old one after it (NEW,OLD), run this command, then remove the old key."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--batch-size", type=int, default=200, help="Rows per transaction (default 200).")

    def handle(self, *args: Any, batch_size: int, **options: Any) -> None:
        rotated = 0
        for model, names in encrypted_fields():
            label = model._meta.label
            pks = list(model._default_manager.order_by("pk").values_list("pk", flat=True))
            for start in range(0, len(pks), batch_size):
                with transaction.atomic():
                    for pk in pks[start : start + batch_size]:
                        try:
                            # Locked while re-encrypting, so an edit made meanwhile is not overwritten.
                            row = model._default_manager.select_for_update().get(pk=pk)
                        except ObjectDoesNotExist:
                            continue
                        except ImproperlyConfigured as exc:
                            raise CommandError(
                                f"{label} {pk}: no key in FIELD_ENCRYPTION_KEY opens its secrets. Add the key they "
                                "were written with after the new one, then run the command again."
                            ) from exc
                        # Saving the plain values encrypts them with the primary key (Fernet, fresh IV).
                        model._default_manager.filter(pk=pk).update(**{name: getattr(row, name) for name in names})
                        rotated += 1
            self.stdout.write(f"{label}: {len(pks)} rows re-encrypted ({', '.join(names)}).")
        self.stdout.write(
            self.style.SUCCESS(
                f"Done: {rotated} rows now use the first key. The other keys can be removed from FIELD_ENCRYPTION_KEY."
            )
        )
