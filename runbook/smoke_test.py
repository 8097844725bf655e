#!/usr/bin/env python3
"""Production smoke test for Ticket Enhancer. Standard library only: runs anywhere Python 3.10+ runs.

    python runbook/smoke_test.py --base-url https://ticket-enhancer.example.com \\
        --tenant acme --secret whsec_... --api-token <token> [--expect-note] [--json] [--timeout 60]

Checks, one line each (PASS/FAIL/SKIP, milliseconds, error):
  health        GET /health -> 200, database connected, redis connected
                (--allow-no-redis also accepts "not configured")
  ready         GET /api/v1/ready -> 200 {"status": "ready"}
  metrics       GET /metrics (or --metrics-url) -> 200 text/plain with a ticket_enhancer_ metric
  bad_signature a webhook with a wrong signature (or token) -> 401
  webhook       a signed request_created webhook for request id smoke-<time> (or --request-id)
                -> 202 + enhancement_id
  enhancement   with --api-token: GET /api/v1/enhancements/<id>/ until it finishes; passes on
                posted/completed (with --expect-note: posted with an sdp_note_id)
  https_redirect, certificate   for https URLs: http:// redirects to https://, the certificate
                verifies and is valid for at least --min-cert-days more days
Exit status 0 when every check passed (SKIP is not a failure), 1 otherwise, 2 on bad arguments.
The secret is the tenant's webhook secret as create_tenant printed it: whsec_... for HMAC
(Standard Webhooks) tenants; with --token-mode it is sent as X-ServiceDesk-Token instead.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import http.client
import json
import socket
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

FINISHED = {"posted", "completed", "awaiting_review", "failed"}
SUCCEEDED = {"posted", "completed"}
USER_AGENT = "ticket-enhancer-smoke-test/1"


class CheckFailed(Exception):
    """A check's expectation was not met; the message says what was seen."""


class Skipped(Exception):
    """A check does not apply to this run."""


@dataclass
class Result:
    name: str
    status: str  # PASS | FAIL | SKIP
    ms: int
    detail: str = ""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise CheckFailed(f"HTTP {self.status}, body is not JSON: {self.body[:200]!r}") from exc

    def describe(self) -> str:
        text = self.body[:300].decode("utf-8", "replace").replace("\n", " ")
        return f"HTTP {self.status}: {text}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return the Standard Webhooks signature header value: "v1,<base64 HMAC-SHA256>"."""
    encoded = secret[len("whsec_") :] if secret.startswith("whsec_") else secret
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SystemExit("--secret must be the whsec_<base64> secret create_tenant printed") from exc
    signed = msg_id.encode() + b"." + str(timestamp).encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


class Smoke:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.base = args.base_url.rstrip("/")
        self.results: list[Result] = []
        self.enhancement_id: str | None = None
        self.request_id = args.request_id or f"smoke-{int(time.time())}-{uuid.uuid4().hex[:6]}"
        context = ssl.create_default_context()
        if args.ca_file:
            context.load_verify_locations(args.ca_file)
        self.context = context
        self.opener = urllib.request.build_opener(_NoRedirect(), urllib.request.HTTPSHandler(context=context))

    # -- plumbing -------------------------------------------------------------------------------
    def http(
        self, method: str, url: str, *, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Response:
        request = urllib.request.Request(url, data=body, method=method)  # noqa: S310 - http(s) only, see parse_args
        request.add_header("User-Agent", USER_AGENT)
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        timeout = min(self.args.request_timeout, max(self.args.timeout, 1))
        try:
            with self.opener.open(request, timeout=timeout) as answer:
                return Response(answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.read())
        except urllib.error.HTTPError as error:
            return Response(error.code, {k.lower(): v for k, v in error.headers.items()}, error.read())
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise CheckFailed(f"{method} {url}: {type(reason).__name__}: {reason}") from exc

    def run(self, name: str, check: Callable[[], str]) -> None:
        started = time.monotonic()
        try:
            detail = check() or ""
            status = "PASS"
        except Skipped as exc:
            status, detail = "SKIP", str(exc)
        except CheckFailed as exc:
            status, detail = "FAIL", str(exc)
        except Exception as exc:
            status, detail = "FAIL", f"{type(exc).__name__}: {exc}"
        result = Result(name, status, int((time.monotonic() - started) * 1000), detail)
        self.results.append(result)
        if not self.args.json:
            line = f"{result.status:<4}  {result.name:<15} {result.ms:>6} ms"
            print(f"{line}  {result.detail}" if result.detail else line, flush=True)

    def webhook(self, body: bytes, *, good: bool) -> Response:
        url = f"{self.base}/webhook/servicedesk/{urllib.parse.quote(self.args.tenant)}/"
        headers = {"Content-Type": "application/json"}
        if self.args.token_mode:
            headers["X-ServiceDesk-Token"] = self.args.secret if good else "not-the-token-" + uuid.uuid4().hex
        else:
            msg_id = f"msg_{uuid.uuid4().hex}"
            timestamp = int(time.time())
            signature = sign(self.args.secret, msg_id, timestamp, body)
            if not good:
                signature = "v1," + base64.b64encode(hashlib.sha256(b"wrong" + body).digest()).decode()
            headers.update({"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": signature})
        return self.http("POST", url, body=body, headers=headers)

    def payload(self) -> bytes:
        payload: dict[str, Any] = {
            "event": "request_created",
            "request": {
                "id": self.request_id,
                "subject": "Smoke test: VPN drops every few minutes",
                "description": "<p>Automated smoke test of the Ticket Enhancer deployment. Safe to ignore.</p>",
                "priority": {"name": "Low"},
                "status": {"name": "Open"},
                "created_time": {"value": str(int(time.time() * 1000))},
            },
        }
        if self.args.token_mode:
            payload["delivery_id"] = f"smoke-delivery-{uuid.uuid4().hex}"
        return json.dumps(payload, separators=(",", ":")).encode()

    # -- checks -----------------------------------------------------------------------------------
    def check_health(self) -> str:
        answer = self.http("GET", f"{self.base}/health")
        if answer.status != 200:
            raise CheckFailed(answer.describe())
        data = answer.json()
        redis_ok = {"connected", "not configured"} if self.args.allow_no_redis else {"connected"}
        if data.get("status") != "healthy" or data.get("database") != "connected" or data.get("redis") not in redis_ok:
            raise CheckFailed(f"unexpected health: {data}")
        return f"database {data['database']}, redis {data['redis']}"

    def check_ready(self) -> str:
        answer = self.http("GET", f"{self.base}/api/v1/ready")
        if answer.status != 200 or answer.json().get("status") != "ready":
            raise CheckFailed(answer.describe())
        return ""

    def check_metrics(self) -> str:
        if self.args.skip_metrics:
            raise Skipped("--skip-metrics")
        url = self.args.metrics_url or f"{self.base}/metrics"
        answer = self.http("GET", url)
        if answer.status != 200:
            raise CheckFailed(f"{url}: {answer.describe()}")
        content_type = answer.headers.get("content-type", "")
        if not content_type.startswith("text/plain"):
            raise CheckFailed(f"Content-Type is {content_type!r}, not text/plain")
        names = {
            line.split("{")[0].split()[0]
            for line in answer.body.decode("utf-8", "replace").splitlines()
            if line.startswith("ticket_enhancer_")
        }
        if not names:
            raise CheckFailed("no ticket_enhancer_ metric in the answer")
        return f"{len(names)} ticket_enhancer_ series"

    def check_bad_signature(self) -> str:
        answer = self.webhook(self.payload(), good=False)
        if answer.status != 401:
            raise CheckFailed(f"expected 401, got {answer.describe()}")
        return ""

    def check_webhook(self) -> str:
        answer = self.webhook(self.payload(), good=True)
        if answer.status != 202:
            raise CheckFailed(f"expected 202, got {answer.describe()}")
        data = answer.json()
        if data.get("status") != "queued" or not data.get("enhancement_id"):
            raise CheckFailed(f"unexpected answer: {data}")
        self.enhancement_id = str(data["enhancement_id"])
        return f"request {self.request_id} -> enhancement {self.enhancement_id}"

    def check_enhancement(self) -> str:
        if not self.args.api_token:
            raise Skipped("no --api-token: the end-to-end result is not checked")
        if not self.enhancement_id:
            raise CheckFailed("no enhancement id (the webhook check failed)")
        url = f"{self.base}/api/v1/enhancements/{self.enhancement_id}/"
        headers = {"Authorization": f"Token {self.args.api_token}", "Accept": "application/json"}
        deadline = time.monotonic() + self.args.timeout
        status = "?"
        data: dict[str, Any] = {}
        while True:
            answer = self.http("GET", url, headers=headers)
            if answer.status != 200:
                raise CheckFailed(f"{url}: {answer.describe()}")
            data = answer.json()
            status = str(data.get("status"))
            if status in FINISHED:
                break
            if time.monotonic() > deadline:
                raise CheckFailed(f"still {status} after {self.args.timeout:g}s")
            time.sleep(1)
        if status not in SUCCEEDED:
            raise CheckFailed(f"finished as {status}: {data.get('error') or ''}".strip())
        if self.args.expect_note:
            if status != "posted" or not data.get("sdp_note_id"):
                raise CheckFailed(
                    f"expected a posted note, got status {status}, sdp_note_id {data.get('sdp_note_id')!r}"
                )
            return f"posted as SDP note {data['sdp_note_id']}"
        return status

    def check_https_redirect(self) -> str:
        parts = urllib.parse.urlsplit(self.base)
        if parts.scheme != "https":
            raise Skipped("base URL is not https")
        url = urllib.parse.urlunsplit(("http", parts.hostname or "", "/health", "", ""))
        answer = self.http("GET", url)
        location = answer.headers.get("location", "")
        if answer.status not in (301, 302, 307, 308) or not location.startswith("https://"):
            raise CheckFailed(f"{url}: expected a redirect to https://, got HTTP {answer.status} {location}".strip())
        return f"{answer.status} -> {location}"

    def check_certificate(self) -> str:
        parts = urllib.parse.urlsplit(self.base)
        if parts.scheme != "https":
            raise Skipped("base URL is not https")
        host, port = parts.hostname or "", parts.port or 443
        try:
            with (
                socket.create_connection((host, port), timeout=self.args.request_timeout) as raw,
                self.context.wrap_socket(raw, server_hostname=host) as tls,
            ):
                cert = tls.getpeercert()
        except ssl.SSLCertVerificationError as exc:
            raise CheckFailed(f"certificate does not verify: {exc.verify_message}") from exc
        except (OSError, ssl.SSLError) as exc:
            raise CheckFailed(f"TLS connection to {host}:{port} failed: {exc}") from exc
        not_after = ssl.cert_time_to_seconds(cert["notAfter"])
        days = int((not_after - time.time()) // 86400)
        issuer = dict(item[0] for item in cert.get("issuer", ())).get("organizationName", "?")
        if days < self.args.min_cert_days:
            raise CheckFailed(f"certificate expires in {days} days (< {self.args.min_cert_days}); issuer {issuer}")
        return f"valid, expires in {days} days, issuer {issuer}"

    def run_all(self) -> int:
        for name, check in (
            ("health", self.check_health),
            ("ready", self.check_ready),
            ("metrics", self.check_metrics),
            ("bad_signature", self.check_bad_signature),
            ("webhook", self.check_webhook),
            ("enhancement", self.check_enhancement),
            ("https_redirect", self.check_https_redirect),
            ("certificate", self.check_certificate),
        ):
            self.run(name, check)
        passed = sum(r.status == "PASS" for r in self.results)
        failed = sum(r.status == "FAIL" for r in self.results)
        skipped = sum(r.status == "SKIP" for r in self.results)
        if self.args.json:
            report: dict[str, Any] = {
                "base_url": self.base,
                "tenant": self.args.tenant,
                "request_id": self.request_id,
                "enhancement_id": self.enhancement_id,
                "ok": failed == 0,
                "passed": passed,
                "failed": failed,
                "skipped": skipped,
                "checks": [asdict(r) for r in self.results],
            }
            print(json.dumps(report, indent=2))
        else:
            print(f"{passed} passed, {failed} failed, {skipped} skipped")
        return 0 if failed == 0 else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Smoke-test a Ticket Enhancer deployment end to end.",
        epilog="Exit status: 0 all checks passed, 1 a check failed, 2 bad arguments.",
    )
    parser.add_argument("--base-url", required=True, help="e.g. https://ticket-enhancer.example.com")
    parser.add_argument("--tenant", required=True, help="tenant slug (the webhook URL's last part)")
    parser.add_argument("--secret", required=True, help="the tenant's webhook secret (whsec_... for hmac)")
    parser.add_argument("--token-mode", action="store_true", help="tenant uses X-ServiceDesk-Token, not HMAC")
    parser.add_argument("--api-token", help="tenant API token: check the enhancement finishes")
    parser.add_argument("--expect-note", action="store_true", help="require a note posted to SDP")
    parser.add_argument(
        "--request-id",
        help="SDP request id to send (default smoke-<time>); with --expect-note against a real SDP, the id "
        "of a fresh test request there, since SDP accepts notes only on existing requests",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON report instead of lines")
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the enhancement to finish (default %(default)s)",
    )
    parser.add_argument(
        "--request-timeout", type=float, default=10.0, help="seconds per HTTP request (default %(default)s)"
    )
    parser.add_argument("--allow-no-redis", action="store_true", help='accept redis "not configured"')
    parser.add_argument("--metrics-url", help="where /metrics is reachable, if not through --base-url")
    parser.add_argument("--skip-metrics", action="store_true", help="do not check /metrics")
    parser.add_argument(
        "--min-cert-days", type=int, default=14, help="fail below this many days of validity (default %(default)s)"
    )
    parser.add_argument("--ca-file", help="extra CA bundle to trust (staging issuers)")
    args = parser.parse_args(argv)
    if args.expect_note and not args.api_token:
        parser.error("--expect-note needs --api-token (the note id is read from the API)")
    if not args.token_mode and not args.secret.startswith("whsec_"):
        parser.error("an hmac tenant's secret starts with whsec_; use --token-mode for X-ServiceDesk-Token")
    if urllib.parse.urlsplit(args.base_url).scheme not in ("http", "https"):
        parser.error("--base-url must start with http:// or https://")
    return args


def main(argv: list[str] | None = None) -> int:
    return Smoke(parse_args(argv)).run_all()


if __name__ == "__main__":
    sys.exit(main())
