"""End to end with real processes: gunicorn + qcluster + the SDP fake, over real HTTP."""

from __future__ import annotations

import json
import time

import pytest

from enhancements.models import Enhancement
from tests.fakes.fixtures import servicedesk_fixture
from tests.processes import running_stack, wait_for
from tests.signing import sign_webhook
from tickets.services import tenant_create_or_update, ticket_upsert

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]


def _signed(secret: str, body: bytes, msg_id: str) -> dict[str, str]:
    return {"Content-Type": "application/json", **sign_webhook(secret, body, msg_id=msg_id)}


def test_signed_webhook_becomes_exactly_one_note_in_sdp(tmp_path, sdp):
    payload = servicedesk_fixture("webhook__request_created")
    sdp.add_request(payload["request"])
    result = tenant_create_or_update(slug="e2e", name="E2E", sdp_base_url=sdp.url, sdp_api_key=sdp.api_key)
    ticket_upsert(
        tenant=result.tenant,
        sdp_id="98765",
        fields={
            "subject": "Outlook password prompts loop after MFA change",
            "resolution": "Cleared cached credentials in Credential Manager; re-created the Outlook profile.",
            "status": "Resolved",
            "is_resolved": True,
        },
        source="import",
    )
    body = json.dumps(payload).encode()

    with running_stack(tmp_path) as stack:
        status, _, health = stack.request("GET", "/health")
        assert status == 200 and health["database"] == "connected"
        status, _, ready = stack.request("GET", "/api/v1/ready")
        assert (status, ready) == (200, {"status": "ready"})

        started = time.monotonic()
        status, headers, answer = stack.request(
            "POST", "/webhook/servicedesk/e2e/", body, _signed(result.secret, body, "msg_e2e_1")
        )
        assert status == 202, answer
        assert answer["status"] == "queued"
        enhancement_id = answer["enhancement_id"]

        posted = wait_for(lambda: Enhancement.objects.filter(pk=enhancement_id, status="posted").first(), timeout=60)
        elapsed = time.monotonic() - started
        notes = sdp.notes["104321"]
        assert len(notes) == 1
        assert f"ticket-enhancer:{enhancement_id}" in notes[0]["description"]
        assert "Credential Manager" in notes[0]["description"]
        assert notes[0]["show_to_requester"] is False
        assert posted.sdp_note_id == str(notes[0]["id"])

        # SDP retrying the same delivery, or sending the same request again: no second note.
        status, _, again = stack.request(
            "POST", "/webhook/servicedesk/e2e/", body, _signed(result.secret, body, "msg_e2e_1")
        )
        assert (status, again["status"]) == (200, "duplicate")
        status, _, again = stack.request(
            "POST", "/webhook/servicedesk/e2e/", body, _signed(result.secret, body, "msg_e2e_2")
        )
        assert (status, again) == (200, {"status": "duplicate", "enhancement_id": enhancement_id})
        time.sleep(1.0)
        assert len(sdp.notes["104321"]) == 1
        print(f"webhook -> posted note: {elapsed:.2f}s")


def test_database_outage_answers_503_from_the_real_server(tmp_path):
    # A server whose database is unreachable (nothing listens on port 1) must not answer with a traceback.
    with running_stack(tmp_path, worker=False, DATABASE_URL="postgres://nobody@127.0.0.1:1/none") as stack:
        status, headers, body = stack.request(
            "POST", "/webhook/servicedesk/acme/", b"{}", {"Content-Type": "application/json"}
        )
        assert status == 503 and body["error"] == "unavailable" and int(headers["Retry-After"]) > 0
        status, _, body = stack.request("GET", "/health")
        assert status == 503 and body["database"] == "unreachable"
        status, _, body = stack.request("GET", "/api/v1/ready")
        assert status == 503 and body["database"] == "unreachable"


def test_concurrent_deliveries_of_one_request_make_one_enhancement(tmp_path):
    import concurrent.futures

    result = tenant_create_or_update(slug="race", name="Race")
    body = json.dumps({"request": {"id": "777", "subject": "Printer offline"}}).encode()

    with running_stack(tmp_path, worker=False) as stack:

        def send(n: int):
            return stack.request(
                "POST", "/webhook/servicedesk/race/", body, _signed(result.secret, body, f"msg_race_{n}")
            )

        with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
            answers = list(pool.map(send, range(24)))

    statuses = sorted(status for status, _, _ in answers)
    assert statuses.count(202) == 1 and statuses.count(200) == 23, statuses
    ids = {body["enhancement_id"] for _, _, body in answers}
    assert len(ids) == 1
    assert Enhancement.objects.filter(ticket__sdp_id="777").count() == 1


def test_transport_edge_cases_over_real_http(tmp_path):
    """Chunked bodies, non-UTF-8 bodies and signature lists as gunicorn really hands them to Django."""
    import base64
    import hashlib
    import hmac
    import http.client
    from urllib.parse import urlsplit

    result = tenant_create_or_update(slug="edge", name="Edge")
    key = base64.b64decode(result.secret.removeprefix("whsec_"))

    def sign(msg_id: bytes, timestamp: int, body: bytes) -> str:
        mac = hmac.new(key, msg_id + b"." + str(timestamp).encode() + b"." + body, hashlib.sha256).digest()
        return "v1," + base64.b64encode(mac).decode()

    def send(body: bytes, headers: dict[str, str | bytes], *, chunked: bool = False) -> tuple[int, dict]:
        parts = urlsplit(stack.base_url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        try:
            conn.putrequest("POST", "/webhook/servicedesk/edge/")
            for name, value in {"Content-Type": "application/json", **headers}.items():
                conn.putheader(name, value)
            if chunked:
                conn.putheader("Transfer-Encoding", "chunked")
                conn.endheaders()
                for start in range(0, len(body), 7):
                    piece = body[start : start + 7]
                    conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
                conn.send(b"0\r\n\r\n")
            else:
                conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body)
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    now = int(time.time())
    with running_stack(tmp_path, worker=False) as stack:
        body = b'{"request": {"id": "1", "subject": "chunked"}}'
        headers = {"webhook-id": "msg_c", "webhook-timestamp": str(now), "webhook-signature": sign(b"msg_c", now, body)}
        status, answer = send(body, headers, chunked=True)
        assert (status, answer["error"]) == (411, "length_required")

        body = b'{"request": {"id": "2", "subject": "caf\xe9"}}'
        headers = {"webhook-id": "msg_l", "webhook-timestamp": str(now), "webhook-signature": sign(b"msg_l", now, body)}
        assert send(body, headers)[1]["error"] == "invalid_json"

        # A webhook-id in UTF-8 bytes: the signature is over those bytes, as sent.
        body = b'{"request": {"id": "3", "subject": "utf-8 id"}}'
        msg_id = "msg_\u00e9t\u00e9".encode()
        signature = "v2,xyz v1,@@ " + sign(msg_id, now, body)
        status, answer = send(
            body, {"webhook-id": msg_id, "webhook-timestamp": str(now), "webhook-signature": signature}
        )
        assert status == 202, answer
    assert Enhancement.objects.filter(ticket__sdp_id="3").count() == 1
    assert not Enhancement.objects.filter(ticket__sdp_id__in=["1", "2"]).exists()


@pytest.mark.parametrize("limit", [50])
def test_rate_limit_holds_under_concurrency_without_redis(tmp_path, limit):
    """The database-cache path (no REDIS_URL): 40 parallel senders get exactly `limit` webhooks in a minute."""
    import concurrent.futures

    from tickets.models import Tenant

    result = tenant_create_or_update(slug="burst", name="Burst", rate_limit_per_minute=limit)
    Tenant.objects.filter(pk=result.tenant.pk).update(rate_limit_per_minute=limit)
    bodies = [json.dumps({"request": {"id": str(1000 + n), "subject": "Burst"}}).encode() for n in range(120)]
    # Wait for the start of a fresh minute window if this one is nearly over: the count is per clock minute.
    if time.time() % 60 > 45:
        time.sleep(61 - time.time() % 60)

    with running_stack(tmp_path, worker=False, REDIS_URL="") as stack:

        def send(n: int):
            return stack.request(
                "POST", "/webhook/servicedesk/burst/", bodies[n], _signed(result.secret, bodies[n], f"msg_b_{n}")
            )[0]

        with concurrent.futures.ThreadPoolExecutor(max_workers=40) as pool:
            statuses = list(pool.map(send, range(len(bodies))))
    assert statuses.count(202) == limit, sorted(statuses)
    assert statuses.count(429) == len(bodies) - limit, sorted(statuses)
    assert Enhancement.objects.filter(tenant=result.tenant).count() == limit
