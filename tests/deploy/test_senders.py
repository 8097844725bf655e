"""The SDP-side senders sign exactly what Standard Webhooks verifies."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.deploy.common import (
    ROOT,
)


class _Receiver:
    """A loopback HTTP server that verifies Standard Webhooks signatures and answers scripted codes."""

    def __init__(self, secret: str, answers: list[int]) -> None:
        import http.server
        import threading

        from standardwebhooks.webhooks import Webhook, WebhookVerificationError

        self.calls: list[dict[str, Any]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    Webhook(secret).verify(body, headers)
                    verified = True
                except WebhookVerificationError:
                    verified = False
                receiver.calls.append({"headers": headers, "body": json.loads(body), "verified": verified})
                code = answers.pop(0) if answers else 202
                self.send_response(code if verified else 401)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"status": "queued", "enhancement_id": "e-1"}')

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhook/servicedesk/acme/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def new_secret() -> tuple[str, str]:
    """Return (whsec_ secret, its printable key), generated like create_tenant does."""
    import base64
    import secrets
    import string

    key = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32))
    return "whsec_" + base64.b64encode(key.encode()).decode(), key


def test_execute_script_sends_a_verifiable_signed_call(tmp_path: Path) -> None:
    secret, _ = new_secret()
    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps({"request": {"id": "4711", "subject": "Printer", "description": "<p>é</p>"}}))
    script = [sys.executable, str(ROOT / "runbook" / "sdp_execute_script.py"), str(request_file)]
    with _Receiver(secret, answers=[503, 202]) as receiver:
        result = subprocess.run(
            [*script, "--url", receiver.url, "--secret", secret], capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["result"] == "success"
    first, second = receiver.calls
    assert first["verified"] and second["verified"]
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"], "a retry must keep the delivery id"
    assert second["body"] == {"event": "request_created", "request": json.loads(request_file.read_text())["request"]}

    # The wrong secret: 401, no retry, exit 1. Secret from the environment, event from the flag.
    with _Receiver(secret, answers=[]) as receiver:
        env = {**os.environ, "TICKET_ENHANCER_WEBHOOK_SECRET": new_secret()[0]}
        result = subprocess.run(
            [*script, "--url", receiver.url, "--event", "request_resolved"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
    assert result.returncode == 1
    assert json.loads(result.stdout)["message"] == "Ticket Enhancer answered 401"
    assert len(receiver.calls) == 1 and receiver.calls[0]["body"]["event"] == "request_resolved"


def test_smoke_test_signature_verifies() -> None:
    import importlib.util

    from standardwebhooks.webhooks import Webhook

    spec = importlib.util.spec_from_file_location("smoke_test", ROOT / "runbook" / "smoke_test.py")
    assert spec and spec.loader
    smoke = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("smoke_test", smoke)  # dataclasses look their module up there
    spec.loader.exec_module(smoke)
    secret, _ = new_secret()
    body = b'{"event":"request_created","request":{"id":"smoke-1"}}'
    now = int(time.time())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(now),
        "webhook-signature": smoke.sign(secret, "msg_1", now, body),
    }
    Webhook(secret).verify(body, headers)


def test_deluge_function_signs_what_standard_webhooks_verifies() -> None:
    """Replay the Deluge function's steps in Python: the text key inside whsec_ + base64 HMAC-SHA256."""
    import base64
    import hashlib
    import hmac

    from standardwebhooks.webhooks import Webhook

    deluge = (ROOT / "runbook" / "sdp_custom_function.deluge").read_text()
    signing = re.search(r"zoho\.encryption\.hmacsha256\(SIGNING_KEY, (.+?), \"base64\"\)", deluge)
    assert signing and signing.group(1) == 'messageId + "." + timestamp + "." + body'
    for header in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        assert f'headers.put("{header}"' in deluge
    assert 'headers.put("webhook-signature", "v1," + signature)' in deluge
    assert "parameters:body" in deluge, "the signed string itself must be the body sent"

    # zoho.encryption.hmacsha256(key, data) = base64 HMAC-SHA256 with the key as text: Zoho's own
    # documented example (deluge/help/encryption/hmac-sha256).
    example = hmac.new(b"sk_5Ow7B_4eC39H", b"{Order ID: 0932, Currency: USD, Amount: 2500}", hashlib.sha256)
    assert base64.b64encode(example.digest()).decode() == "E3IZY+esQ59aLmPCYYVjk2R/P1G0k77r9ZGa9Lw94Zw="

    secret, key = new_secret()
    message_id, timestamp = "sdp_4711_1764150000000", str(int(time.time()))
    body = '{"event":"request_created","request":{"id":"4711","subject":"Printer"}}'
    signature = base64.b64encode(
        hmac.new(key.encode(), f"{message_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    ).decode()
    headers = {"webhook-id": message_id, "webhook-timestamp": timestamp, "webhook-signature": "v1," + signature}
    Webhook(secret).verify(body.encode(), headers)


def test_smoke_test_checks_the_certificate(tmp_path: Path) -> None:
    """Against https, the certificate check verifies the chain and reports the days to expiry."""
    import datetime
    import http.server
    import ssl
    import threading

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=45))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"https://localhost:{server.server_address[1]}"

    def certificate_check(*extra: str) -> dict[str, Any]:
        result = subprocess.run(
            [sys.executable, "runbook/smoke_test.py", "--json", "--base-url", base, "--tenant", "t",
             "--secret", "whsec_dGVzdA==", "--request-timeout", "3", *extra],
            capture_output=True, text=True, cwd=ROOT, timeout=60,
        )  # fmt: skip
        assert result.returncode == 1  # health etc. fail against this stub
        return next(c for c in json.loads(result.stdout)["checks"] if c["name"] == "certificate")

    try:
        trusted = certificate_check("--ca-file", str(cert_file))
        assert trusted["status"] == "PASS", trusted
        assert re.search(r"expires in 4[45] days", trusted["detail"]), trusted
        too_soon = certificate_check("--ca-file", str(cert_file), "--min-cert-days", "60")
        assert too_soon["status"] == "FAIL" and "< 60" in too_soon["detail"]
        untrusted = certificate_check()
        assert untrusted["status"] == "FAIL" and "does not verify" in untrusted["detail"], untrusted
    finally:
        server.shutdown()
        server.server_close()
