"""SDP URLs that cannot be called (impossible port, broken host...): refused on save, a permanent error later.

A URL written before validation existed (or straight into the database) must not answer 500 in the admin, leave
an enhancement claimed, or be retried by the worker as an unexpected error.
"""

from __future__ import annotations

import pytest

from enhancements.models import Enhancement
from enhancements.services import enhancement_approve, enhancement_process
from tests.fakes.fixtures import servicedesk_fixture
from tests.review_helpers import operator, support_lead
from tests.test_admin import _tenant_form
from tickets.models import Tenant
from tickets.sdp.client import ServiceDeskClient, ServiceDeskError, check_base_url
from tickets.services import tenant_create_or_update

pytestmark = pytest.mark.django_db

CREATED = servicedesk_fixture("webhook__request_created")

IMPOSSIBLE = [
    pytest.param("https://example.com:99999", "port", id="port-too-large"),
    pytest.param("https://example.com:65536", "port", id="port-65536"),
    pytest.param("https://example.com:0", "port", id="port-zero"),
    pytest.param("https://example.com:-1", "port", id="port-negative"),
    pytest.param("https://example.com:8a", "port", id="port-not-digits"),
    pytest.param("https://[::1", "", id="unclosed-ipv6"),
    pytest.param("https://" + "a" * 64 + ".example.com", "host", id="label-too-long"),
    pytest.param("https://exa mple.com", "", id="space-in-host"),
    pytest.param("https://sdp.example.com\n/x", "", id="newline"),
    pytest.param("https://admin:pw@sdp.example.com", "credentials", id="userinfo"),
    pytest.param("https://sdp.example.com/?portal=x", "query", id="query"),
    pytest.param("https://sdp.example.com/#x", "fragment", id="fragment"),
    pytest.param("https://", "", id="no-host"),
]


@pytest.mark.parametrize(("url", "says"), IMPOSSIBLE)
@pytest.mark.parametrize("allow_insecure", [True, False])
def test_an_impossible_url_is_a_permanent_error_with_a_sentence(url, says, allow_insecure):
    for resolve in (False, True):
        with pytest.raises(ServiceDeskError) as caught:
            check_base_url(url, allow_insecure=allow_insecure, resolve=resolve)
        assert caught.value.permanent and says in str(caught.value)


@pytest.mark.parametrize(("url", "says"), IMPOSSIBLE)
def test_the_client_refuses_it_as_a_permanent_error(url, says, settings):
    settings.SDP_ALLOW_INSECURE_URLS = True
    with pytest.raises(ServiceDeskError) as caught:
        ServiceDeskClient(base_url=url, api_key="k")
    assert caught.value.permanent


@pytest.mark.parametrize(("url", "says"), IMPOSSIBLE[:7])
def test_the_tenant_form_refuses_it(client, url, says):
    client.force_login(operator())
    response = client.post("/admin/tickets/tenant/add/", _tenant_form(sdp_base_url=url))
    assert response.status_code == 200
    assert response.context["adminform"].form.errors.get("sdp_base_url"), response.context["adminform"].form.errors
    assert not Tenant.objects.filter(slug="initech").exists()


def test_create_tenant_refuses_it():
    with pytest.raises(ServiceDeskError) as caught:
        tenant_create_or_update(slug="initech", name="Initech", sdp_base_url="https://example.com:99999")
    assert "port" in str(caught.value)
    assert not Tenant.objects.exists()


@pytest.fixture
def stored_impossible(make_tenant, sdp):
    """Return a review-required tenant whose URL became impossible after it was saved (as an old row would)."""
    sdp.add_request(CREATED["request"])
    result = make_tenant("acme", sdp_base_url=sdp.url, sdp_api_key=sdp.api_key, review_required=True)
    return result


def _break(tenant: Tenant) -> None:
    Tenant.objects.filter(pk=tenant.pk).update(sdp_base_url="https://example.com:99999")


def test_test_connection_answers_a_message_not_500(client, stored_impossible):
    _break(stored_impossible.tenant)
    client.force_login(operator())
    response = client.post(f"/admin/tickets/tenant/{stored_impossible.tenant.pk}/test-connection/", follow=True)
    assert response.status_code == 200
    messages = [str(m) for m in response.context["messages"]]
    assert any("connection failed" in m and "port" in m for m in messages), messages


def test_approve_answers_a_message_and_leaves_nothing_claimed(client, stored_impossible, post_webhook):
    enhancement_id = post_webhook("acme", CREATED, secret=stored_impossible.secret).json()["enhancement_id"]
    assert enhancement_process(enhancement_id=enhancement_id) == Enhancement.Status.AWAITING_REVIEW
    _break(stored_impossible.tenant)
    client.force_login(support_lead())
    url = f"/admin/enhancements/enhancement/{enhancement_id}/approve/"
    response = client.post(url, follow=True)
    assert response.status_code == 200
    messages = [str(m) for m in response.context["messages"]]
    assert any("Not posted" in m and "port" in m for m in messages), messages
    row = Enhancement.objects.get(pk=enhancement_id)
    # A permanent error: marked failed with the reason, not left claimed "by lead".
    assert row.status == Enhancement.Status.FAILED and "port" in row.error
    again = client.post(url, follow=True)
    assert again.status_code == 200 and "Nothing done" in " ".join(str(m) for m in again.context["messages"])
    repost = client.post(f"/admin/enhancements/enhancement/{enhancement_id}/repost/", follow=True)
    assert repost.status_code == 200
    assert any("Not posted" in str(m) for m in repost.context["messages"])
    assert Enhancement.objects.get(pk=enhancement_id).status == Enhancement.Status.FAILED


@pytest.mark.django_db(transaction=True)  # the refused UPDATE must not poison a test-wide transaction
@pytest.mark.parametrize("action", ["approve", "repost"])
def test_an_unexpected_error_after_the_claim_releases_it(stored_impossible, post_webhook, sdp, action):
    # Any failure that is not an SDP error must still answer with a sentence and leave the row actionable.
    # Here the database refuses to record "posted" (a data exception from a trigger; PostgreSQL only).
    from django.db import connection

    from enhancements.services import enhancement_repost

    if connection.vendor != "postgresql":
        pytest.skip("the refusing trigger needs PostgreSQL")
    enhancement_id = post_webhook("acme", CREATED, secret=stored_impossible.secret).json()["enhancement_id"]
    assert enhancement_process(enhancement_id=enhancement_id) == Enhancement.Status.AWAITING_REVIEW
    if action == "repost":
        Enhancement.objects.filter(pk=enhancement_id).update(status=Enhancement.Status.FAILED)
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE OR REPLACE FUNCTION te_refuse_posted() RETURNS trigger AS $$ BEGIN IF NEW.status = 'posted' THEN "
            "RAISE EXCEPTION 'refused' USING ERRCODE = '22023'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
        )
        cursor.execute(
            "CREATE TRIGGER te_refuse_posted BEFORE UPDATE ON enhancements_enhancement FOR EACH ROW "
            "EXECUTE FUNCTION te_refuse_posted()"
        )
    lead = support_lead()
    act = enhancement_approve if action == "approve" else enhancement_repost
    try:
        result = act(enhancement_id=enhancement_id, user=lead)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER te_refuse_posted ON enhancements_enhancement")
    expected = Enhancement.Status.AWAITING_REVIEW if action == "approve" else Enhancement.Status.FAILED
    assert result.failed and "Not posted" in result.message and "DataError" in result.message
    row = Enhancement.objects.get(pk=enhancement_id)
    assert row.status == expected and row.reviewed_by is None and "DataError" in row.error
    # The note did reach SDP before the failure: approving or re-posting again finds it, never posts twice.
    again = act(enhancement_id=enhancement_id, user=lead)
    assert again.status == Enhancement.Status.POSTED, again.message
    assert len(sdp.notes[CREATED["request"]["id"]]) == 1


def test_the_worker_fails_once_with_a_sentence(make_tenant, post_webhook, sdp):
    result = make_tenant("acme", sdp_base_url=sdp.url, sdp_api_key=sdp.api_key)
    _break(result.tenant)
    enhancement_id = post_webhook("acme", {"request": {"id": "5"}}, secret=result.secret).json()["enhancement_id"]
    assert enhancement_process(enhancement_id=enhancement_id) == Enhancement.Status.FAILED
    row = Enhancement.objects.get(pk=enhancement_id)
    assert row.attempts == 1 and "port" in row.error and "Unexpected" not in row.error
