"""How a call reaches SDP API v3 and what its answer means: the HTTP session, the `input_data` envelope,
timeouts, bounded retries with backoff (layer 1 of project/retry.py), Zoho token renewal on a 401, and the
mapping of SDP's answers to `ServiceDeskError(permanent=...)`. The endpoints are in `client.py`.
"""

from __future__ import annotations

import functools
import json
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

import certifi
import httpx
from django.conf import settings

from project.retry import backoff_delay
from tickets.sdp.addresses import check_base_url
from tickets.sdp.errors import ServiceDeskError
from tickets.storable import storable_json

logger = logging.getLogger("tickets.sdp.client")

ACCEPT = "application/vnd.manageengine.sdp.v3+json"
SUCCESS = 2000
THROTTLED = 4015
MAX_ROW_COUNT = 100
# Never sleep longer than this inside one call for a Retry-After; longer waits go back to the queue.
MAX_INLINE_WAIT = 10.0


@dataclass(frozen=True)
class Page:
    """One page of a list call."""

    rows: list[dict[str, Any]]
    has_more_rows: bool
    start_index: int
    row_count: int
    total_count: int | None


def _status_list(body: Any) -> list[dict[str, Any]]:
    status = body.get("response_status") if isinstance(body, dict) else None
    if isinstance(status, dict):
        return [status]
    if isinstance(status, list):
        return [s for s in status if isinstance(s, dict)]
    return []


def _messages(body: Any) -> list[dict[str, Any]]:
    return [m for s in _status_list(body) for m in s.get("messages") or [] if isinstance(m, dict)]


def _describe(body: Any) -> str:
    texts = []
    for m in _messages(body):
        text = str(m.get("message") or m.get("status_code") or "").strip()
        if m.get("field"):
            text = f"{m['field']}: {text}"
        if text:
            texts.append(text)
    return "; ".join(texts) or "no message"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """Return the process's TLS context: loading the CA bundle per client cost most of a task's CPU."""
    return ssl.create_default_context(cafile=certifi.where())


class ServiceDeskTransport:
    """One tenant's SDP session: every call has a timeout and bounded retries; subclassed by ServiceDeskClient."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        auth_type: str = "authtoken",
        timeout: float | None = None,
        max_retries: int = 2,
        backoff_base: float = 0.5,
        transport: httpx.BaseTransport | None = None,
        token_refresher: Callable[[str], str] | None = None,
    ) -> None:
        if not base_url or not api_key:
            raise ServiceDeskError("The tenant has no SDP URL or API key configured.", permanent=True)
        check_base_url(base_url)
        auth_header = (
            {"Authorization": f"Zoho-oauthtoken {api_key}"} if auth_type == "zoho_oauth" else {"authtoken": api_key}
        )
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self._api_key = api_key
        # Given the rejected token, returns a renewed one (SDP Cloud access tokens expire).
        self._token_refresher = token_refresher
        try:
            self._client = httpx.Client(
                base_url=base_url.rstrip("/") + "/api/v3",
                headers={"Accept": ACCEPT, "User-Agent": "ticket-enhancer/1.0", **auth_header},
                timeout=timeout or settings.SDP_TIMEOUT,
                follow_redirects=False,
                transport=transport,
                verify=_ssl_context(),
            )
        except (httpx.InvalidURL, ValueError, UnicodeError) as exc:
            # check_base_url should have caught it; whatever httpx still refuses is a configuration error.
            raise ServiceDeskError(f"The SDP URL {base_url!r} cannot be used: {exc}.", permanent=True) from exc

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    # --- plumbing ---------------------------------------------------------------------------
    def _page(self, body: dict[str, Any], key: str, fallback_key: str | None = None) -> Page:
        rows = body.get(key)
        if rows is None and fallback_key:
            rows = body.get(fallback_key)
        info = body.get("list_info") or {}
        return Page(
            rows=[r for r in rows or [] if isinstance(r, dict)],
            has_more_rows=bool(info.get("has_more_rows")),
            start_index=int(info.get("start_index") or 1),
            row_count=int(info.get("row_count") or len(rows or [])),
            total_count=int(info["total_count"]) if str(info.get("total_count", "")).isdigit() else None,
        )

    def _call(
        self,
        method: str,
        path: str,
        *,
        input_data: dict[str, Any] | None = None,
        idempotent: bool = False,
    ) -> dict[str, Any]:
        attempt = 0
        refreshed = False
        while True:
            attempt += 1
            try:
                return self._once(method, path, input_data)
            except ServiceDeskError as exc:
                if exc.status == 401 and self._token_refresher and not refreshed:
                    # A 401 means the request was not acted on: renew the token once and send it again.
                    refreshed = True
                    self._set_token(self._token_refresher(self._api_key))
                    continue
                # A POST is retried only when SDP certainly did not act on it (429 / throttled /
                # connection refused); anything unclear goes back to the caller, who checks first.
                retryable = not exc.permanent and (idempotent or not exc.unclear)
                if not retryable or attempt > self.max_retries:
                    raise
                delay = (
                    exc.retry_after
                    if exc.retry_after is not None
                    else backoff_delay(attempt, base=self.backoff_base, cap=MAX_INLINE_WAIT)
                )
                if delay > MAX_INLINE_WAIT:
                    raise
                logger.info("SDP %s %s failed (%s); retry %d in %.1fs", method, path, exc, attempt, delay)
                time.sleep(delay)

    def _set_token(self, token: str) -> None:
        self._api_key = token
        self._client.headers["Authorization"] = f"Zoho-oauthtoken {token}"

    def _once(self, method: str, path: str, input_data: dict[str, Any] | None) -> dict[str, Any]:
        try:
            return self._send(method, path, input_data)
        except ServiceDeskError as exc:
            # Messages quote SDP's own words, and a server may echo the credentials it was sent; they end
            # up in logs and on the Enhancement row, so the key never does.
            if self._api_key in str(exc):
                exc.args = (str(exc).replace(self._api_key, "[REDACTED]"),)
            raise

    def _send(self, method: str, path: str, input_data: dict[str, Any] | None) -> dict[str, Any]:
        encoded = json.dumps(input_data) if input_data is not None else None
        try:
            if method == "GET":
                params = {"input_data": encoded} if encoded else None
                response = self._client.request(method, path, params=params)
            else:
                # SDP takes input as a form field named input_data holding a JSON string.
                response = self._client.request(method, path, data={"input_data": encoded or "{}"})
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise ServiceDeskError(f"The SDP URL cannot be called: {exc}", permanent=True) from exc
        except httpx.ConnectError as exc:
            raise ServiceDeskError(f"Could not connect to SDP: {exc}", permanent=False) from exc
        except httpx.TimeoutException as exc:
            raise ServiceDeskError(
                f"SDP did not answer within {self._client.timeout.read}s.", permanent=False, unclear=True
            ) from exc
        except httpx.HTTPError as exc:
            raise ServiceDeskError(f"SDP call failed: {exc}", permanent=False, unclear=True) from exc
        return self._parse(response)

    def _parse(self, response: httpx.Response) -> dict[str, Any]:
        code = response.status_code
        try:
            # SDP's JSON can hold what no database stores (NaN, \u0000, lone surrogates): repair it here, once.
            body = storable_json(response.json(), repair=True)
        except ValueError:
            body = None
        if 300 <= code < 400:
            raise ServiceDeskError(
                f"SDP answered with a redirect ({code}) to {response.headers.get('Location', '?')}; "
                "check the tenant's SDP URL (redirects are not followed).",
                permanent=True,
                status=code,
            )
        if code == 429 or any(m.get("status_code") == THROTTLED for m in _messages(body)):
            raise ServiceDeskError(
                "SDP is throttling our calls (too many requests).",
                permanent=False,
                status=code,
                retry_after=_retry_after(response),
            )
        if code >= 500:
            raise ServiceDeskError(f"SDP had a server error (HTTP {code}).", permanent=False, status=code, unclear=True)
        if code in (401, 403):
            raise ServiceDeskError(
                f"SDP refused our credentials (HTTP {code}: {_describe(body)}); check the tenant's API key and "
                "its permissions.",
                permanent=True,
                status=code,
            )
        if code == 404:
            raise ServiceDeskError(
                f"SDP has no such request or endpoint (HTTP 404: {_describe(body)}).", permanent=True, status=code
            )
        if not isinstance(body, dict):
            raise ServiceDeskError(
                f"SDP answered HTTP {code} with a body that is not JSON.", permanent=False, status=code
            )
        statuses = _status_list(body)
        ok = code < 400 and statuses and all(s.get("status_code") == SUCCESS for s in statuses)
        if not ok:
            raise ServiceDeskError(
                f"SDP rejected the call (HTTP {code}): {_describe(body)}", permanent=True, status=code
            )
        return body
