"""Security: SSRF guard, no redirects, secrets kept out of answers and messages, rate limiting, key rotation."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import connection

from enhancements import services
from enhancements.models import Enhancement
from tests.fakes.sdp import FakeServiceDesk
from tickets.models import Tenant
from tickets.sdp.client import ServiceDeskClient, ServiceDeskError, check_base_url
from tickets.services import tenant_create_or_update

pytestmark = pytest.mark.django_db

TICKET = {"request": {"id": "501", "subject": "Mail down", "description": "Outlook cannot connect."}}


# --- SSRF guard -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1",
        "https://localhost:8443",
        "https://10.1.2.3",
        "https://172.16.0.9",
        "https://192.168.1.10/sdp",
        "https://169.254.169.254/latest/meta-data",
        "https://100.64.0.1",
        "https://0.0.0.0",
        "https://[::1]",
        "https://[fe80::1]",
        "https://[fd00::1]",
        "https://[::ffff:127.0.0.1]",
        "https://2130706433",  # 127.0.0.1 written as one number
        "https://0x7f.1",  # 127.0.0.1 in hex shorthand
    ],
)
def test_private_loopback_and_link_local_addresses_are_refused(url):
    with pytest.raises(ServiceDeskError) as caught:
        check_base_url(url, allow_insecure=False)
    assert caught.value.permanent
    assert "private or local address" in str(caught.value)


@pytest.mark.parametrize("url", ["http://sdp.example.com", "http://8.8.8.8"])
def test_plain_http_is_refused_unless_allowed(url):
    with pytest.raises(ServiceDeskError, match="must use https") as caught:
        check_base_url(url, allow_insecure=False)
    assert caught.value.permanent


@pytest.mark.parametrize("url", ["ftp://sdp.example.com", "file:///etc/passwd", "gopher://x", "https://", "sdp"])
def test_other_schemes_are_refused_even_when_insecure_urls_are_allowed(url):
    with pytest.raises(ServiceDeskError, match="not a valid http"):
        check_base_url(url, allow_insecure=True)


def test_public_https_addresses_are_accepted():
    check_base_url("https://8.8.8.8", allow_insecure=False)
    check_base_url("https://[2001:4860:4860::8888]/app/itdesk", allow_insecure=False)


def test_allow_insecure_urls_is_for_local_runs(settings):
    settings.SDP_ALLOW_INSECURE_URLS = True
    check_base_url("http://127.0.0.1:8080")
    settings.SDP_ALLOW_INSECURE_URLS = False
    with pytest.raises(ServiceDeskError):
        check_base_url("http://127.0.0.1:8080")


def test_a_tenant_cannot_be_configured_with_a_private_url(settings):
    settings.SDP_ALLOW_INSECURE_URLS = False
    with pytest.raises(ServiceDeskError):
        tenant_create_or_update(slug="evil", sdp_base_url="https://169.254.169.254", sdp_api_key="k")
    assert not Tenant.objects.filter(slug="evil").exists()


def test_the_tenant_admin_form_refuses_a_private_sdp_or_zoho_accounts_url(settings):
    from tickets.admin import TenantForm

    settings.SDP_ALLOW_INSECURE_URLS = False
    urls = {"sdp_base_url": "https://169.254.169.254", "zoho_accounts_url": "https://10.0.0.1"}
    form = TenantForm(data={"slug": "evil", "name": "Evil", **urls})
    assert not form.is_valid()
    for name in urls:
        assert "private or local address" in " ".join(form.errors[name]), form.errors
    form = TenantForm(data={"slug": "fine", "name": "Fine", "sdp_base_url": "https://8.8.8.8"})
    assert "sdp_base_url" not in form.errors and "zoho_accounts_url" not in form.errors


def test_the_pipeline_refuses_a_private_url_stored_earlier(make_tenant, post_webhook, settings, sdp):
    # A URL that was allowed when stored (or written straight into the database) is checked again on use.
    result = make_tenant("acme", sdp_base_url=sdp.url, sdp_api_key=sdp.api_key)
    enhancement_id = post_webhook("acme", TICKET, secret=result.secret).json()["enhancement_id"]
    settings.SDP_ALLOW_INSECURE_URLS = False
    assert services.enhancement_process(enhancement_id=enhancement_id) == Enhancement.Status.FAILED
    enhancement = Enhancement.objects.get(pk=enhancement_id)
    assert "must use https" in enhancement.error
    assert sdp.requests_log == []


# --- redirects --------------------------------------------------------------------------------
class _Recorder(ThreadingHTTPServer):
    """A loopback server that records request paths and answers with a fixed reply."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes = b"{}") -> None:
        self.paths: list[str] = []
        reply = (status, headers, body)

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                self.server.paths.append(self.path)  # type: ignore[attr-defined]
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                self.send_response(reply[0])
                for name, value in reply[1].items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply[2])))
                self.end_headers()
                self.wfile.write(reply[2])

            do_GET = do_POST = _serve

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def redirect_pair() -> Iterator[tuple[_Recorder, _Recorder]]:
    """Return (a server answering 302 to the other one, the other one)."""
    target = _Recorder(200, {"Content-Type": "application/json"}, b'{"response_status": {"status_code": 2000}}')
    redirector = _Recorder(302, {"Location": f"{target.url}/api/v3/requests/501/notes"})
    threads = [
        threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        for s in (target, redirector)
    ]
    for thread in threads:
        thread.start()
    try:
        yield redirector, target
    finally:
        for server in (target, redirector):
            server.shutdown()
            server.server_close()


def test_redirects_are_not_followed(redirect_pair, settings):
    settings.SDP_ALLOW_INSECURE_URLS = True
    redirector, target = redirect_pair
    client = ServiceDeskClient(base_url=redirector.url, api_key="k", max_retries=3)
    with client, pytest.raises(ServiceDeskError) as caught:
        client.add_note("501", "<p>note</p>")
    assert caught.value.permanent and caught.value.status == 302
    assert "redirects are not followed" in str(caught.value)
    assert len(redirector.paths) == 1  # no retry of a permanent failure
    assert target.paths == []


def test_a_redirecting_sdp_fails_the_enhancement_permanently(redirect_pair, make_tenant, post_webhook, settings):
    redirector, target = redirect_pair
    result = make_tenant("acme", sdp_base_url=redirector.url, sdp_api_key="sdp-key")
    enhancement_id = post_webhook("acme", TICKET, secret=result.secret).json()["enhancement_id"]
    assert services.enhancement_process(enhancement_id=enhancement_id) == Enhancement.Status.FAILED
    enhancement = Enhancement.objects.get(pk=enhancement_id)
    assert "redirect (302)" in enhancement.error and enhancement.attempts == 1
    assert target.paths == []


# --- secrets ----------------------------------------------------------------------------------
SDP_KEY = "SDPKEY-77aa88bb99cc00dd11ee"


def test_secrets_are_encrypted_at_rest(make_tenant):
    result = make_tenant("acme", sdp_base_url="http://127.0.0.1:1", sdp_api_key=SDP_KEY)
    with connection.cursor() as cursor:
        cursor.execute("SELECT sdp_api_key, webhook_secret FROM tickets_tenant WHERE slug = %s", ["acme"])
        stored = cursor.fetchone()
    assert SDP_KEY not in stored[0] and result.secret not in stored[1]
    assert Tenant.objects.get(slug="acme").sdp_api_key == SDP_KEY


def test_servicedesk_errors_never_contain_the_api_key(settings):
    settings.SDP_ALLOW_INSECURE_URLS = True
    echo = {"response_status": {"status_code": 4000, "messages": [{"status_code": 4001, "message": f"bad {SDP_KEY}"}]}}
    with FakeServiceDesk(api_key="another-key") as sdp:
        messages = []
        # Refused credentials, an SDP that echoes what it got, a server error, and nothing listening.
        for failure in ({"status": 401}, {"status": 400, "body": json.dumps(echo)}, {"status": 500}):
            sdp.fail_next(**failure)
            with ServiceDeskClient(base_url=sdp.url, api_key=SDP_KEY, max_retries=0) as client:
                with pytest.raises(ServiceDeskError) as caught:
                    client.get_request("1")
                messages.append(str(caught.value))
    with ServiceDeskClient(base_url="http://127.0.0.1:1", api_key=SDP_KEY, max_retries=0) as client:
        with pytest.raises(ServiceDeskError) as caught:
            client.get_request("1")
        messages.append(str(caught.value))
    assert len(messages) == 4
    for message in messages:
        assert SDP_KEY not in message, message
    assert "bad [REDACTED]" in messages[1]


def test_answers_never_contain_secrets(client, make_tenant, post_webhook):
    result = make_tenant("acme", sdp_base_url="http://127.0.0.1:1", sdp_api_key=SDP_KEY)
    token = make_tenant("tok", webhook_auth=Tenant.WebhookAuth.TOKEN)
    answers = [
        post_webhook("acme", TICKET, secret=result.secret),
        post_webhook("acme", TICKET, secret=result.secret),
        post_webhook("acme", b"{", secret=result.secret),
        post_webhook("acme", TICKET, secret="whsec_QUJDREVGR0hJSktMTU5P"),
        post_webhook("tok", TICKET, token=token.secret),
        post_webhook("tok", TICKET, token=token.secret[:-1]),
        client.get("/health"),
        client.get("/api/v1/ready"),
        client.get("/metrics"),
        client.get("/does-not-exist"),
    ]
    text = "\n".join(f"{a.status_code} {dict(a.items())} {a.content.decode()}" for a in answers)
    for secret in (SDP_KEY, result.secret, token.secret, django_settings.SECRET_KEY):
        assert secret not in text
    assert str(Tenant.objects.get(slug="acme")) == "Acme (acme)"
    assert SDP_KEY not in repr(Tenant.objects.get(slug="acme"))


# --- rate limiting ----------------------------------------------------------------------------
@pytest.mark.skipif(not django_settings.REDIS_URL, reason="REDIS_URL is not set")
def test_rate_limit_is_shared_through_redis(make_tenant, post_webhook):
    import redis

    result = make_tenant("acme")
    Tenant.objects.filter(slug="acme").update(rate_limit_per_minute=5)
    if time.time() % 60 > 55:
        time.sleep(6)  # stay inside one rate-limit minute
    assert post_webhook("acme", {"request": {"id": "1"}}, secret=result.secret).status_code == 202
    server = redis.Redis.from_url(django_settings.REDIS_URL)
    tenant_pk = Tenant.objects.get(slug="acme").pk
    keys = [k.decode() for k in server.keys(f"*webhook-rate:{tenant_pk}:*")]
    assert len(keys) == 1 and int(server.get(keys[0])) == 1
    # Another web replica counted four more in the same minute: this one sees them.
    server.incrby(keys[0], 4)
    response = post_webhook("acme", {"request": {"id": "2"}}, secret=result.secret)
    assert response.status_code == 429 and response.json()["error"] == "rate_limited"
    assert 1 <= int(response["Retry-After"]) <= 60
    assert not Enhancement.objects.filter(ticket__sdp_id="2").exists()


def test_rate_limit_without_redis_counts_in_one_database_row_per_minute(make_tenant, post_webhook, settings):
    from datetime import timedelta

    from django.utils import timezone

    from enhancements.models import RateCounter
    from enhancements.tasks import sweep

    settings.REDIS_URL = ""
    result = make_tenant("acme")
    Tenant.objects.filter(slug="acme").update(rate_limit_per_minute=3)
    if time.time() % 60 > 55:
        time.sleep(6)  # stay inside one rate-limit minute
    answers = [post_webhook("acme", {"request": {"id": str(n)}}, secret=result.secret).status_code for n in range(5)]
    assert answers == [202, 202, 202, 429, 429]
    (counter,) = RateCounter.objects.all()
    assert counter.count == 5 and counter.key.startswith(f"webhook-rate:{result.tenant.pk}:")
    RateCounter.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    sweep()
    assert not RateCounter.objects.exists()


def test_rate_limit_zero_disables_it(make_tenant, post_webhook):
    result = make_tenant("acme")
    Tenant.objects.filter(slug="acme").update(rate_limit_per_minute=0)
    for index in range(5):
        assert post_webhook("acme", {"request": {"id": str(index)}}, secret=result.secret).status_code == 202


# --- key rotation -----------------------------------------------------------------------------
def _stored(slug: str) -> tuple[str, str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT sdp_api_key, webhook_secret FROM tickets_tenant WHERE slug = %s", [slug])
        return cursor.fetchone()


def test_rotate_encryption_key(make_tenant, post_webhook, settings):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEY = old
    acme = make_tenant("acme", sdp_base_url="http://127.0.0.1:1", sdp_api_key=SDP_KEY)
    make_tenant("empty")  # no SDP key: an empty value stays empty
    before = _stored("acme")

    # Step 1: the new key first, the old one after it. Everything still reads.
    settings.FIELD_ENCRYPTION_KEY = f"{new},{old}"
    assert Tenant.objects.get(slug="acme").sdp_api_key == SDP_KEY
    out = io.StringIO()
    call_command("rotate_encryption_key", stdout=out)
    assert "tickets.Tenant: 2 rows re-encrypted" in out.getvalue()
    after = _stored("acme")
    assert after != before
    for token in after:
        Fernet(new.encode()).decrypt(token.encode())
        with pytest.raises(InvalidToken):
            Fernet(old.encode()).decrypt(token.encode())
    assert _stored("empty")[0] == ""

    # Step 2: the old key is gone; secrets still open and the webhook still verifies.
    settings.FIELD_ENCRYPTION_KEY = new
    assert Tenant.objects.get(slug="acme").sdp_api_key == SDP_KEY
    assert post_webhook("acme", TICKET, secret=acme.secret).status_code == 202

    # The old key alone no longer opens anything.
    settings.FIELD_ENCRYPTION_KEY = old
    with pytest.raises(ImproperlyConfigured):
        Tenant.objects.get(slug="acme")


def test_rotation_with_a_missing_old_key_fails_clearly_and_changes_nothing(make_tenant, settings):
    settings.FIELD_ENCRYPTION_KEY = Fernet.generate_key().decode()
    make_tenant("acme", sdp_base_url="http://127.0.0.1:1", sdp_api_key=SDP_KEY)
    before = _stored("acme")
    settings.FIELD_ENCRYPTION_KEY = Fernet.generate_key().decode()
    with pytest.raises(CommandError, match="no key in FIELD_ENCRYPTION_KEY opens its secrets"):
        call_command("rotate_encryption_key", stdout=io.StringIO())
    assert _stored("acme") == before


# --- Content-Security-Policy -------------------------------------------------------------------
def test_admin_pages_send_a_content_security_policy(client, db):
    policy = client.get("/admin/login/")["Content-Security-Policy"]
    for directive in ("default-src 'self'", "script-src 'self'", "object-src 'none'", "frame-ancestors 'none'",
                      "base-uri 'self'", "form-action 'self'"):  # fmt: skip
        assert directive in policy, policy
    assert "unsafe-eval" not in policy and "'unsafe-inline'" not in policy.split("script-src")[1].split(";")[0]
