#!/usr/bin/env python3
"""ServiceDesk Plus (on-premises) "Execute Script" action: send the request to Ticket Enhancer.

Python 3.8+ standard library only. SDP writes the full v3 request JSON ({"request": {...}}) to a
temporary file and passes its path as $COMPLETE_V3_JSON_FILE. This script wraps it as a webhook
body, signs it the Standard Webhooks way (webhook-id, webhook-timestamp, webhook-signature:
"v1,<base64 HMAC-SHA256(key, '<id>.<timestamp>.<body>')>") and POSTs it, retrying transient
failures with the same webhook-id (the service deduplicates on it).

Install (runbook/onboarding.md, "On-premises: Execute Script"):
  1. Copy this file to [SDP_HOME]/integration/custom_scripts/executor_files/ on the SDP server.
  2. Set WEBHOOK_URL and WEBHOOK_SECRET below (or the environment variables of the same name
     prefixed TICKET_ENHANCER_, or --url/--secret), from `manage.py create_tenant` output.
  3. In the business rule or custom trigger, action "Execute Script", command:
       py sdp_execute_script.py $COMPLETE_V3_JSON_FILE          (Windows)
       python3 sdp_execute_script.py $COMPLETE_V3_JSON_FILE     (Linux)
     For resolved/closed requests add: --event request_resolved
Exit status 0 when Ticket Enhancer accepted the call (202 queued, 200 duplicate/stored/ignored),
1 otherwise. One JSON line on stdout says what happened (SDP shows it in the script log).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
import uuid

# Edit these two, or set TICKET_ENHANCER_WEBHOOK_URL / TICKET_ENHANCER_WEBHOOK_SECRET.
WEBHOOK_URL = "https://ticket-enhancer.example.com/webhook/servicedesk/acme/"
WEBHOOK_SECRET = "whsec_REPLACE_ME"  # noqa: S105 - a placeholder the installer replaces

TIMEOUT_SECONDS = 10
ATTEMPTS = 3


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return the webhook-signature header value for body."""
    key = base64.b64decode(secret[len("whsec_") :] if secret.startswith("whsec_") else secret)
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def build_body(path: str, event: str) -> tuple[bytes, str]:
    """Return the webhook body for the request in SDP's JSON file, and the request id."""
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    request = data.get("request", data) if isinstance(data, dict) else None
    if not isinstance(request, dict) or not request.get("id"):
        raise ValueError(f"{path} holds no request object with an id")
    body = json.dumps({"event": event, "request": request}, ensure_ascii=False, separators=(",", ":"))
    return body.encode("utf-8"), str(request["id"])


def send(url: str, secret: str, body: bytes, msg_id: str, context: ssl.SSLContext) -> tuple[int, str]:
    """POST body once; return (HTTP status, answer text). Network errors raise OSError."""
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "sdp-execute-script/1 (ticket-enhancer)",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, msg_id, timestamp, body),
    }
    if not url.startswith(("https://", "http://")):
        raise ValueError(f"WEBHOOK_URL must be an http(s) URL, not {url!r}")
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310 - checked above
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS, context=context) as answer:  # noqa: S310
            return answer.status, answer.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8", "replace")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Send an SDP request to Ticket Enhancer (signed).")
    parser.add_argument("json_file", nargs="?", default=os.environ.get("COMPLETE_V3_JSON_FILE"))
    parser.add_argument("--event", default="request_created", help="request_created | request_resolved | ...")
    parser.add_argument("--url", default=os.environ.get("TICKET_ENHANCER_WEBHOOK_URL", WEBHOOK_URL))
    parser.add_argument("--secret", default=os.environ.get("TICKET_ENHANCER_WEBHOOK_SECRET", WEBHOOK_SECRET))
    parser.add_argument("--ca-file", help="CA bundle for a private certificate authority")
    args = parser.parse_args(argv)

    def report(result: str, message: str, **extra: object) -> int:
        print(json.dumps({"result": result, "message": message, **extra}))
        return 0 if result == "success" else 1

    if not args.json_file:
        return report("failure", "no request file: pass $COMPLETE_V3_JSON_FILE")
    if "REPLACE_ME" in args.secret or not args.secret.startswith("whsec_"):
        return report("failure", "set WEBHOOK_SECRET to the whsec_ secret create_tenant printed")
    try:
        body, request_id = build_body(args.json_file, args.event)
    except (OSError, ValueError) as exc:
        return report("failure", f"cannot read the request: {exc}")

    context = ssl.create_default_context(cafile=args.ca_file)
    # One delivery id for every attempt: a retry of a call that did arrive is a duplicate, not a new job.
    msg_id = f"sdp_{request_id}_{uuid.uuid4().hex}"
    status, text = 0, ""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            status, text = send(args.url, args.secret, body, msg_id, context)
        except (OSError, ValueError) as exc:
            status, text = 0, f"{type(exc).__name__}: {exc}"
        if status in (200, 202):
            return report("success", f"Ticket Enhancer answered {status}", request=request_id, answer=text[:300])
        if status and status < 500 and status != 429:
            break  # 400/401/403/413/415: retrying cannot help
        if attempt < ATTEMPTS:
            time.sleep(2**attempt)
    return report("failure", f"Ticket Enhancer answered {status or 'nothing'}", request=request_id, answer=text[:300])


if __name__ == "__main__":
    sys.exit(main())
