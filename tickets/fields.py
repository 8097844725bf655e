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


class BitCodeField(models.BinaryField):
    """Bytes stored as a bit string on PostgreSQL (`bit varying`, so `bit_count(a # b)` is their Hamming
    distance without an extension) and as a blob elsewhere."""

    def db_type(self, connection: Any) -> str | None:
        """Return `bit varying` on PostgreSQL, the binary type elsewhere."""
        return "bit varying" if connection.vendor == "postgresql" else super().db_type(connection)

    def get_db_prep_value(self, value: Any, connection: Any, prepared: bool = False) -> Any:
        """Return the value as PostgreSQL's bit-string text, or as bytes."""
        if value is None:
            return None
        if connection.vendor == "postgresql":
            value = bytes(value)
            return f"{int.from_bytes(value, 'big'):0{len(value) * 8}b}" if value else ""
        return super().get_db_prep_value(value, connection, prepared)

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> bytes | None:
        """Return the stored bits as bytes."""
        if value is None:
            return None
        if isinstance(value, str):
            return int(value, 2).to_bytes(len(value) // 8, "big") if value else b""
        return bytes(value)
