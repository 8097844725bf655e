"""Model fields for secrets encrypted at rest."""

from __future__ import annotations

from typing import Any

from django.db import models

from tickets import crypto


class EncryptedTextField(models.TextField):
    """A text field stored as Fernet ciphertext and read back as plain text."""

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> str | None:
        """Return the decrypted value."""
        if value in (None, ""):
            return value
        return crypto.decrypt(value)

    def get_prep_value(self, value: Any) -> Any:
        """Return the ciphertext to store."""
        value = super().get_prep_value(value)
        if value in (None, ""):
            return value
        return crypto.encrypt(value)
