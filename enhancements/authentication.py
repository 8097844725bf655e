"""The read API's credentials: `Authorization: Token <key>` with a per-tenant ApiToken (the project's only token)."""

from __future__ import annotations

from dataclasses import dataclass

from rest_framework import authentication, exceptions
from rest_framework.request import Request

from enhancements.models import ApiToken
from enhancements.services.tokens import api_token_authenticate


@dataclass(frozen=True)
class TokenUser:
    """The caller behind a tenant API token (not a Django user)."""

    token: ApiToken
    is_authenticated: bool = True
    is_staff: bool = False

    def __str__(self) -> str:
        return f"API token {self.token}"


class TenantTokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Token <key>` (or `Bearer <key>`) with a per-tenant ApiToken."""

    keywords = ("token", "bearer")

    def authenticate(self, request: Request) -> tuple[TokenUser, ApiToken] | None:
        """Return the token's caller, None without a token header, or raise for a bad token."""
        header = authentication.get_authorization_header(request).decode("latin-1").split()
        if not header or header[0].lower() not in self.keywords:
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("The Authorization header must be `Token <key>`.")
        token = api_token_authenticate(key=header[1])
        if token is None:
            raise exceptions.AuthenticationFailed("The API token is unknown or revoked.")
        return TokenUser(token=token), token

    def authenticate_header(self, request: Request) -> str:
        """Return the WWW-Authenticate value, which makes failures answer 401 rather than 403."""
        return "Token"
