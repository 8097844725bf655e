"""The one client for ManageEngine ServiceDesk Plus API v3 (facts: docs/servicedesk-api.md)."""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

import certifi
import httpx
from django.conf import settings

from project.retry import backoff_delay
from tickets.storable import storable_json

logger = logging.getLogger(__name__)

ACCEPT = "application/vnd.manageengine.sdp.v3+json"
SUCCESS = 2000
THROTTLED = 4015
MAX_ROW_COUNT = 100
# Never sleep longer than this inside one call for a Retry-After; longer waits go back to the queue.
MAX_INLINE_WAIT = 10.0


class ServiceDeskError(Exception):
    """A failed SDP call; `permanent` says whether retrying can help."""

    def __init__(
        self,
        message: str,
        *,
        permanent: bool,
        status: int | None = None,
        retry_after: float | None = None,
        unclear: bool = False,
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.status = status
        self.retry_after = retry_after
        # The request may have reached SDP (e.g. a timeout after sending a note).
        self.unclear = unclear


def _usable_url(url: str) -> SplitResult:
    """Return the parts of url; raise ServiceDeskError(permanent) for a URL no HTTP client can call.

    Django's URLValidator accepts ports up to 99999 and urlsplit only complains when the port is read, so an
    impossible URL used to be saved and then failed on every call as a ValueError (a 500 in the admin, five
    "unexpected" retries in the worker).
    """

    def refuse(reason: str) -> ServiceDeskError:
        return ServiceDeskError(f"The SDP URL {url!r} cannot be used: {reason}.", permanent=True)

    if not isinstance(url, str) or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise refuse("it contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise refuse(f"{exc} (the port must be a number from 1 to 65535)" if "ort" in str(exc) else str(exc)) from exc
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise refuse("it is not a valid http(s) URL with a host name")
    if port == 0:
        raise refuse("port 0 (the port must be a number from 1 to 65535)")
    if parts.username is not None or parts.password is not None:
        raise refuse("it contains credentials (put the API key in the tenant's key field, never in the URL)")
    if parts.query:
        raise refuse("it has a query string (give the base URL only)")
    if parts.fragment:
        raise refuse("it has a fragment (give the base URL only)")
    host = parts.hostname.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            host.encode("idna")
        except UnicodeError as exc:
            raise refuse(f"the host name is not valid ({exc})") from exc
    return parts


def check_base_url(url: str, *, allow_insecure: bool | None = None, resolve: bool = True) -> None:
    """Raise ServiceDeskError(permanent) unless url is an https URL on a public address.

    With resolve=False only literal addresses are checked (for saving a tenant while DNS may not answer);
    every call re-checks with resolution, so a name that later points inward is still refused.
    """
    allow = settings.SDP_ALLOW_INSECURE_URLS if allow_insecure is None else allow_insecure
    parts = _usable_url(url)
    host = parts.hostname or ""  # _usable_url refuses a URL without one
    if allow:
        return
    if parts.scheme != "https":
        raise ServiceDeskError(
            "The SDP URL must use https (set SDP_ALLOW_INSECURE_URLS=1 only for local testing).",
            permanent=True,
        )
    if host.lower() in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        raise ServiceDeskError(f"The SDP host {host} is a private or local address; refused.", permanent=True)
    if resolve:
        try:
            addresses = [info[4][0] for info in socket.getaddrinfo(host, parts.port or 443)]
        except OSError as exc:
            raise ServiceDeskError(f"The SDP host {host} cannot be resolved: {exc}", permanent=False) from exc
    else:
        addresses = [host.strip("[]")]
    for raw in addresses:
        try:
            address = ipaddress.ip_address(raw)
        except ValueError:
            continue  # a name we did not resolve: checked again when it is called
        if not address.is_global:
            raise ServiceDeskError(
                f"The SDP host {host} resolves to a private or local address ({address}); "
                "refused (set SDP_ALLOW_INSECURE_URLS=1 only for local testing).",
                permanent=True,
            )


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


class ServiceDeskClient:
    """Calls one tenant's SDP; every call has a timeout and bounded retries (layer 1 of project/retry.py)."""

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

    def __enter__(self) -> ServiceDeskClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    # --- calls ------------------------------------------------------------------------------
    def get_request(self, request_id: str) -> dict[str, Any]:
        """Return the v3 request object for request_id."""
        body = self._call("GET", f"/requests/{request_id}", idempotent=True)
        request = body.get("request")
        if not isinstance(request, dict):
            raise ServiceDeskError("SDP answered without a request object.", permanent=False)
        return request

    def list_requests(
        self,
        *,
        start_index: int = 1,
        row_count: int = MAX_ROW_COUNT,
        search_criteria: list[dict[str, Any]] | None = None,
        sort_field: str = "created_time",
        sort_order: str = "asc",
    ) -> Page:
        """Return one page of requests matching search_criteria."""
        list_info: dict[str, Any] = {
            "row_count": min(row_count, MAX_ROW_COUNT),
            "start_index": start_index,
            "sort_field": sort_field,
            "sort_order": sort_order,
            "get_total_count": True,
        }
        if search_criteria:
            list_info["search_criteria"] = search_criteria
        body = self._call("GET", "/requests", input_data={"list_info": list_info}, idempotent=True)
        return self._page(body, "requests")

    def list_notes(self, request_id: str) -> list[dict[str, Any]]:
        """Return every note of a request (all pages)."""
        notes: list[dict[str, Any]] = []
        start = 1
        for _ in range(100):
            body = self._call(
                "GET",
                f"/requests/{request_id}/notes",
                input_data={"list_info": {"row_count": MAX_ROW_COUNT, "start_index": start}},
                idempotent=True,
            )
            page = self._page(body, "request_notes", fallback_key="notes")
            notes.extend(page.rows)
            if not page.has_more_rows or not page.rows:
                break
            start = page.start_index + page.row_count
        return notes

    def add_note(self, request_id: str, description_html: str) -> dict[str, Any]:
        """Post a technician-only note and return SDP's note object."""
        note = {
            "description": description_html,
            "show_to_requester": False,
            "notify_technician": False,
            "mark_first_response": False,
            "add_to_linked_requests": False,
        }
        try:
            body = self._call("POST", f"/requests/{request_id}/notes", input_data={"request_note": note})
        except ServiceDeskError as exc:
            # Some on-premises builds want the key `note` and reject `request_note` as an extra key
            # (docs/servicedesk-api.md, "add a note"): retry once with the other key.
            if exc.status == 400 and ("request_note" in str(exc) or "EXTRA_KEY" in str(exc)):
                body = self._call("POST", f"/requests/{request_id}/notes", input_data={"note": note})
            else:
                raise
        created = body.get("request_note") or body.get("note")
        if not isinstance(created, dict):
            raise ServiceDeskError("SDP accepted the note but returned no note object.", permanent=False, unclear=True)
        return created

    def link_requests(self, request_id: str, linked_ids: list[str], *, comments: str = "") -> dict[str, Any]:
        """Link requests to request_id (POST /requests/{id}/link_requests) and return SDP's answer."""
        links = [{"linked_request": {"id": str(other)}, "comments": comments} for other in linked_ids]
        # Linking twice is harmless (SDP keeps one link), so a retry after an unclear outcome is safe.
        return self._call(
            "POST", f"/requests/{request_id}/link_requests", input_data={"link_requests": links}, idempotent=True
        )

    def list_conversations(self, request_id: str) -> list[dict[str, Any]]:
        """Return the request's conversations (requester replies and e-mails; SDP lists notes separately)."""
        rows: list[dict[str, Any]] = []
        start = 1
        for _ in range(20):
            body = self._call(
                "GET",
                f"/requests/{request_id}/conversations",
                input_data={"list_info": {"row_count": MAX_ROW_COUNT, "start_index": start}},
                idempotent=True,
            )
            page = self._page(body, "conversations")
            rows.extend(page.rows)
            if not page.has_more_rows or not page.rows:
                break
            start = page.start_index + page.row_count
        return rows

    def list_all(
        self, path: str, key: str, *, search_criteria: list[dict[str, Any]] | None = None, max_pages: int = 100
    ) -> list[dict[str, Any]]:
        """Return every row of a v3 list endpoint (e.g. `/categories`, key `categories`), all pages."""
        rows: list[dict[str, Any]] = []
        start = 1
        for _ in range(max_pages):
            list_info: dict[str, Any] = {"row_count": MAX_ROW_COUNT, "start_index": start}
            if search_criteria:
                list_info["search_criteria"] = search_criteria
            body = self._call("GET", path, input_data={"list_info": list_info}, idempotent=True)
            page = self._page(body, key)
            rows.extend(page.rows)
            if not page.has_more_rows or not page.rows:
                break
            start = page.start_index + page.row_count
        return rows

    def update_request(self, request_id: str, fields: dict[str, Any], *, reason: str = "") -> dict[str, Any]:
        """Change fields of a request (`PUT /requests/{id}`) and return SDP's request object.

        `reason` goes in `update_reason` (shown in the request's history); builds that reject the key as
        extra get the update once more without it. Like a note, the PUT is retried here only when SDP certainly
        did not act on it; an unclear outcome goes back to the caller, who reads the request before writing
        again (a person may have changed the field meanwhile).
        """
        changes = dict(fields, update_reason=reason) if reason else dict(fields)
        try:
            body = self._call("PUT", f"/requests/{request_id}", input_data={"request": changes})
        except ServiceDeskError as exc:
            if reason and exc.status == 400 and ("update_reason" in str(exc) or "EXTRA_KEY" in str(exc)):
                body = self._call("PUT", f"/requests/{request_id}", input_data={"request": dict(fields)})
            else:
                raise
        request = body.get("request")
        if not isinstance(request, dict):
            raise ServiceDeskError("SDP accepted the update but returned no request object.", permanent=False)
        return request

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
