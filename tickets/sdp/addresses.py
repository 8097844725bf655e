"""Which SDP base URLs we call: a usable http(s) URL, https on a public address unless insecure URLs are allowed."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import SplitResult, urlsplit

from django.conf import settings

from tickets.sdp.errors import ServiceDeskError


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
