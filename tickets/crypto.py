"""Encryption at rest for tenant secrets (Fernet; several keys allow rotation)."""

from __future__ import annotations

import base64
import hashlib
import logging
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

logger = logging.getLogger(__name__)


def _keys() -> list[bytes]:
    raw = [k.strip() for k in (settings.FIELD_ENCRYPTION_KEY or "").split(",") if k.strip()]
    if raw:
        return [k.encode() for k in raw]
    # Local runs have no key configured: derive one from SECRET_KEY so secrets are still not
    # stored in clear text. Production sets FIELD_ENCRYPTION_KEY (see runbook/rotation.md).
    digest = hashlib.sha256(f"ticket-enhancer-fields:{settings.SECRET_KEY}".encode()).digest()
    return [base64.urlsafe_b64encode(digest)]


@lru_cache(maxsize=4)
def _fernet(keys: tuple[bytes, ...]) -> MultiFernet:
    try:
        return MultiFernet([Fernet(k) for k in keys])
    except ValueError as exc:
        raise ImproperlyConfigured(
            "FIELD_ENCRYPTION_KEY must be comma-separated Fernet keys "
            "(generate one with: python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())')"
        ) from exc


def fernet() -> MultiFernet:
    """Return the MultiFernet for the configured keys (the first key encrypts)."""
    return _fernet(tuple(_keys()))


def encrypt(value: str) -> str:
    """Return the ciphertext of value."""
    return fernet().encrypt(value.encode()).decode()


def decrypt(token: str) -> str:
    """Return the plaintext of token; raise ImproperlyConfigured when no key opens it."""
    try:
        return fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise ImproperlyConfigured(
            "A stored secret cannot be decrypted with FIELD_ENCRYPTION_KEY: was the key changed "
            "without keeping the old one (comma-separated) until rotate_encryption_key ran?"
        ) from exc


def rotate(token: str) -> str:
    """Return token re-encrypted with the primary key."""
    return fernet().rotate(token.encode()).decode()
