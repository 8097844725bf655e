"""Logs: JSON lines with the request id and enhancement id from webhook to note, and no secret ever logged."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.conf import settings as django_settings
from django.utils.module_loading import import_string

from enhancements import tasks
from enhancements.models import Enhancement
from project.logging import ContextFilter
from tests.fakes.sdp import FakeServiceDesk
from tickets.models import Tenant
from tickets.services import webhook_secret_decode

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent


class Captured:
    """Every log record of the block, formatted exactly as production's JSON formatter does."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    @property
    def text(self) -> str:
        """Return all captured output."""
        return self.stream.getvalue()

    def lines(self) -> list[dict]:
        """Return each captured line parsed as JSON."""
        return [json.loads(line) for line in self.text.splitlines() if line.strip()]


@pytest.fixture
def json_logs() -> Iterator[Captured]:
    """Capture every record at DEBUG through the configured JSON formatter and context filter."""
    config = django_settings.LOGGING["formatters"]["json"]
    formatter = import_string(config["()"])(fmt=config["fmt"], rename_fields=config["rename_fields"])
    captured = Captured()
    handler = logging.StreamHandler(captured.stream)
    handler.setFormatter(formatter)
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    # Production levels for the libraries stay as configured; our code and Django log everything.
    root.setLevel(logging.DEBUG)
    try:
        yield captured
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def test_one_ticket_can_be_followed_from_webhook_to_note(make_tenant, post_webhook, sdp, json_logs):
    result = make_tenant("acme", sdp_base_url=sdp.url, sdp_api_key=sdp.api_key)
    sdp.add_request({"id": "4242", "subject": "Printer offline"})
    payload = {"request": {"id": "4242", "subject": "Printer offline", "description": "The printer is offline."}}
    response = post_webhook("acme", payload, secret=result.secret, headers={"HTTP_X_REQUEST_ID": "trace-4242"})
    assert response.status_code == 202 and response["X-Request-ID"] == "trace-4242"
    enhancement_id = response.json()["enhancement_id"]

    # The worker's entry point, in another "process" as far as context variables go: nothing is bound yet.
    assert tasks.process_enhancement(enhancement_id) == Enhancement.Status.POSTED

    lines = json_logs.lines()
    assert lines, "nothing was logged"
    for line in lines:
        assert {"time", "level", "logger", "message", "request_id", "enhancement_id"} <= line.keys()
    webhook = [line for line in lines if line["logger"] == "enhancements.webhooks"]
    assert webhook and all(line["request_id"] == "trace-4242" for line in webhook)
    posted = [line for line in lines if line["message"].startswith("note posted")]
    assert posted == [{**posted[0], "request_id": "trace-4242", "enhancement_id": enhancement_id}]
    # Everything the worker logged carries both ids (the fakes log from their own server threads).
    worker = [line for line in lines[lines.index(webhook[-1]) + 1 :] if not line["logger"].startswith("tests.")]
    assert worker and all(
        (line["request_id"], line["enhancement_id"]) == ("trace-4242", enhancement_id) for line in worker
    )


def test_rejected_requests_are_logged_with_their_request_id(tenant, post_webhook, json_logs):
    response = post_webhook("acme", {"request": {"id": "1"}}, headers={"HTTP_X_REQUEST_ID": "trace-401"})
    assert response.status_code == 401
    rejected = [line for line in json_logs.lines() if line["logger"] == "django.request"]
    assert rejected and rejected[0]["request_id"] == "trace-401"


def _run_json_logging(code: str) -> list[dict]:
    env = {**os.environ, "LOG_FORMAT": "json", "LOG_LEVEL": "INFO", "DJANGO_SETTINGS_MODULE": "project.settings"}
    done = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stderr.splitlines()]


def test_log_format_json_writes_one_json_object_per_line():
    code = (
        "import logging; from project.logging import log_context; log = logging.getLogger('enhancements.services');\n"
        "with log_context(request_id='r-1', enhancement_id='e-1'):\n"
        "    log.info('working on %s', 'it')\n"
        "    try:\n"
        "        1 / 0\n"
        "    except ZeroDivisionError:\n"
        "        log.exception('it broke')\n"
        "log.warning('outside')"
    ).replace("\n", "\n")
    lines = _run_json_logging(f"exec({code!r})")
    assert [line["message"] for line in lines] == ["working on it", "it broke", "outside"]
    assert lines[0] | {"time": "t"} == {
        "time": "t",
        "level": "INFO",
        "logger": "enhancements.services",
        "message": "working on it",
        "request_id": "r-1",
        "enhancement_id": "e-1",
    }
    # The traceback stays inside its record's line, where a log pipeline keeps it together.
    assert "ZeroDivisionError" in lines[1]["exc_info"]
    assert (lines[2]["request_id"], lines[2]["enhancement_id"]) == ("-", "-")


# --- secrets ----------------------------------------------------------------------------------
SDP_KEY = "SDPKEY-5f1c9e0a7b3d4c2e8f6a"
OPENAI_KEY = "sk-OPENAIKEY-9a8b7c6d5e4f3a2b1c0d"
TOKEN_SECRET = "TOKENSECRET-3c4d5e6f7a8b9c0d1e2f"


@pytest.fixture
def known_secrets(settings, openai_fake) -> dict[str, str]:
    """Configure process-wide secrets with recognisable values; return them by name."""
    settings.FIELD_ENCRYPTION_KEY = Fernet.generate_key().decode()
    settings.SECRET_KEY = "SECRETKEY-" + "x" * 50
    openai_fake.api_key = OPENAI_KEY
    settings.OPENAI_API_KEY = OPENAI_KEY
    return {
        "FIELD_ENCRYPTION_KEY": settings.FIELD_ENCRYPTION_KEY,
        "SECRET_KEY": settings.SECRET_KEY,
        "OPENAI_API_KEY": OPENAI_KEY,
    }


def test_secrets_are_never_logged(make_tenant, post_webhook, json_logs, known_secrets, openai_fake, settings):
    settings.ENHANCEMENT_MAX_ATTEMPTS = 2
    with FakeServiceDesk(api_key=SDP_KEY) as sdp:
        hmac_tenant = make_tenant("acme", sdp_base_url=sdp.url, sdp_api_key=SDP_KEY)
        token_tenant = make_tenant(
            "tok", webhook_auth=Tenant.WebhookAuth.TOKEN, webhook_secret=TOKEN_SECRET, sdp_base_url=sdp.url
        )
        Tenant.objects.filter(slug="tok").update(sdp_api_key="")
        secrets = {
            **known_secrets,
            "SDP_KEY": SDP_KEY,
            "TOKEN_SECRET": TOKEN_SECRET,
            "WEBHOOK_SECRET": hmac_tenant.secret,
            "WEBHOOK_SIGNING_KEY": webhook_secret_decode(secret=hmac_tenant.secret),
        }
        assert token_tenant.secret == TOKEN_SECRET

        ids = []
        for request_id in ("1", "2", "3", "4"):
            sdp.add_request({"id": request_id, "subject": f"Ticket {request_id}"})
            payload = {"request": {"id": request_id, "subject": f"Ticket {request_id}", "description": "Broken."}}
            ids.append(post_webhook("acme", payload, secret=hmac_tenant.secret).json()["enhancement_id"])
        # Rejections: a wrong signature, a wrong token, a right token.
        assert post_webhook("acme", {"request": {"id": "9"}}, secret="whsec_QUJDREVGR0hJSktMTU5P").status_code == 401
        assert post_webhook("tok", {"request": {"id": "9"}}, token="not-the-token").status_code == 401
        assert post_webhook("tok", {"request": {"id": "8", "subject": "s"}}, token=TOKEN_SECRET).status_code == 202

        # Processing: a clean note; SDP refusing the key (permanent); SDP down then up (retry);
        # the LLM refusing its key (offline fallback).
        assert tasks.process_enhancement(ids[0]) == Enhancement.Status.POSTED
        sdp.fail_next(status=401, path_contains="/notes")
        assert tasks.process_enhancement(ids[1]) == Enhancement.Status.FAILED
        sdp.fail_next(count=10, status=500, path_contains="/requests/3/notes")
        assert tasks.process_enhancement(ids[2]) == Enhancement.Status.QUEUED
        openai_fake.fail_next(count=10, status=401)
        assert tasks.process_enhancement(ids[3]) == Enhancement.Status.POSTED

    text = json_logs.text
    # The test saw the failures it meant to cause, so the error paths really were logged.
    assert "enhancement failed: ServiceDesk Plus: SDP refused our credentials" in text
    assert "server error" in text and "LLM failed" in text
    for name, value in secrets.items():
        assert value not in text, f"{name} appears in the logs"
    errors = " ".join(Enhancement.objects.values_list("error", flat=True))
    for name, value in secrets.items():
        assert value not in errors, f"{name} appears in an enhancement's error"
