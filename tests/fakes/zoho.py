"""A fake Zoho accounts server that renews SDP Cloud access tokens, served over real HTTP on loopback.

Each renewal issues a new access token and makes the paired FakeServiceDesk accept only that one, as a real
SDP Cloud stops accepting an expired token.
"""

from __future__ import annotations

import itertools
from typing import Any

from tests.fakes._http import FakeServer, RecordedRequest, Reply
from tests.fakes.sdp import FakeServiceDesk


class FakeZohoAccounts(FakeServer):
    """Answer `POST /oauth/v2/token` with grant_type=refresh_token like Zoho's accounts servers."""

    def __init__(
        self,
        sdp: FakeServiceDesk,
        *,
        client_id: str = "1000.client",
        client_secret: str = "client-secret",
        refresh_token: str = "1000.refresh",
        expires_in: int = 3600,
    ) -> None:
        super().__init__()
        self.sdp = sdp
        self.client_id = client_id
        self.client_secret = client_secret
        self.refresh_token = refresh_token
        self.expires_in = expires_in
        self.issued: list[str] = []
        self._ids = itertools.count(1)

    @property
    def url(self) -> str:
        """Return the accounts URL to store as a tenant's `zoho_accounts_url`."""
        return self.origin

    def handle(self, request: RecordedRequest) -> Reply:
        """Return a new access token for a valid refresh request."""
        if request.method != "POST" or request.path.rstrip("/") != "/oauth/v2/token":
            return Reply.json(404, {"error": "not_found"})
        # Zoho takes the parameters from the query string or the form body.
        params: dict[str, Any] = {**request.query, **request.form}
        if params.get("grant_type") != "refresh_token":
            return Reply.json(200, {"error": "unsupported_grant_type"})
        if params.get("client_id") != self.client_id or params.get("client_secret") != self.client_secret:
            return Reply.json(200, {"error": "invalid_client"})
        if params.get("refresh_token") != self.refresh_token:
            return Reply.json(200, {"error": "invalid_code"})
        token = f"1000.access{next(self._ids)}"
        with self._lock:
            self.issued.append(token)
            self.sdp.api_key = token
        return Reply.json(
            200,
            {
                "access_token": token,
                "expires_in": self.expires_in,
                "api_domain": "https://www.zohoapis.com",
                "token_type": "Bearer",
            },
        )
