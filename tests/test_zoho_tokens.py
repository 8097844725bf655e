"""SDP Cloud tenants: expired access tokens are renewed with the Zoho refresh token, once, and used."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from enhancements import tasks
from enhancements.models import Enhancement
from tests.fakes.fixtures import servicedesk_fixture
from tests.fakes.sdp import FakeServiceDesk
from tests.fakes.zoho import FakeZohoAccounts
from tickets.models import Tenant
from tickets.sdp.auth import servicedesk_client
from tickets.sdp.client import ServiceDeskError

pytestmark = pytest.mark.django_db

CREATED = servicedesk_fixture("webhook__request_created")


@pytest.fixture
def cloud():
    with FakeServiceDesk(auth="zoho_oauth", api_key="1000.expired", portal="itdesk") as sdp:
        sdp.add_request(CREATED["request"])
        with FakeZohoAccounts(sdp) as accounts:
            yield sdp, accounts


def _tenant(sdp, accounts, **fields) -> Tenant:
    values = {
        "slug": "cloudy",
        "name": "Cloudy",
        "sdp_base_url": sdp.url,
        "sdp_auth_type": Tenant.AuthType.ZOHO_OAUTH,
        "sdp_api_key": "1000.expired",
        "zoho_accounts_url": accounts.url,
        "zoho_client_id": accounts.client_id,
        "zoho_client_secret": accounts.client_secret,
        "zoho_refresh_token": accounts.refresh_token,
        "webhook_secret": "whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVoxMjM0",
        **fields,
    }
    return Tenant.objects.create(**values)


def test_a_token_without_known_expiry_is_renewed_before_use(cloud):
    sdp, accounts = cloud
    tenant = _tenant(sdp, accounts)
    with servicedesk_client(tenant=tenant) as client:
        assert client.get_request("104321")["id"] == "104321"
    tenant.refresh_from_db()
    assert accounts.issued == ["1000.access1"] and tenant.sdp_api_key == "1000.access1"
    assert tenant.sdp_token_expires_at > timezone.now() + timedelta(minutes=50)
    # Still fresh: the next client reuses it without asking Zoho again.
    with servicedesk_client(tenant=tenant) as client:
        client.get_request("104321")
    assert accounts.issued == ["1000.access1"]
    refresh = [r for r in accounts.requests_log if r.method == "POST"][0]
    assert refresh.form["grant_type"] == "refresh_token" and "refresh_token" not in refresh.query


def test_a_token_sdp_rejects_is_renewed_once_and_the_call_repeated(cloud, post_webhook):
    sdp, accounts = cloud
    # Our record says the token is fresh, but SDP has already expired it.
    tenant = _tenant(sdp, accounts, sdp_token_expires_at=timezone.now() + timedelta(minutes=30))
    sdp.api_key = "1000.only-zoho-knows-the-next-one"
    response = post_webhook("cloudy", CREATED, secret=tenant.webhook_secret)
    assert response.status_code == 202
    tasks.process_enhancement(response.json()["enhancement_id"])
    enhancement = Enhancement.objects.get(pk=response.json()["enhancement_id"])
    assert enhancement.status == Enhancement.Status.POSTED, enhancement.error
    assert accounts.issued == ["1000.access1"]
    assert len(sdp.notes["104321"]) == 1
    posts = [r for r in sdp.requests_log if r.method == "POST"]
    assert [p.headers["authorization"] for p in posts] == [
        "Zoho-oauthtoken 1000.expired",
        "Zoho-oauthtoken 1000.access1",
    ]


def test_a_revoked_refresh_token_fails_permanently_with_a_clear_reason(cloud, post_webhook):
    sdp, accounts = cloud
    tenant = _tenant(sdp, accounts, zoho_refresh_token="1000.revoked")
    response = post_webhook("cloudy", CREATED, secret=tenant.webhook_secret)
    tasks.process_enhancement(response.json()["enhancement_id"])
    enhancement = Enhancement.objects.get(pk=response.json()["enhancement_id"])
    assert enhancement.status == Enhancement.Status.FAILED
    assert "Zoho refused to renew" in enhancement.error and "invalid_code" in enhancement.error
    assert "1000.revoked" not in enhancement.error and not sdp.notes


def test_zoho_unreachable_is_transient(cloud):
    sdp, accounts = cloud
    tenant = _tenant(sdp, accounts)
    accounts.stop()
    with pytest.raises(ServiceDeskError) as caught:
        servicedesk_client(tenant=tenant)
    assert not caught.value.permanent


def test_a_tenant_without_a_refresh_token_uses_its_key_as_given(cloud):
    sdp, accounts = cloud
    tenant = _tenant(sdp, accounts, zoho_refresh_token="", sdp_api_key="1000.expired")
    sdp.api_key = "1000.newer"  # SDP has expired the stored token
    with servicedesk_client(tenant=tenant) as client, pytest.raises(ServiceDeskError) as caught:
        client.get_request("104321")
    assert caught.value.permanent and caught.value.status == 401
    assert accounts.issued == []


def test_create_tenant_stores_the_renewal_credentials_without_printing_them():
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command(
        "create_tenant", "cloudy", "--sdp-url", "https://sdpondemand.manageengine.eu/app/itdesk",
        "--sdp-auth-type", "zoho_oauth", "--zoho-accounts-url", "https://accounts.zoho.eu",
        "--zoho-client-id", "1000.cid", "--zoho-client-secret", "csecret-123", "--zoho-refresh-token", "1000.rt-456",
        stdout=out,
    )  # fmt: skip
    tenant = Tenant.objects.get(slug="cloudy")
    assert tenant.can_refresh_token and tenant.has_sdp_credentials
    assert (tenant.zoho_client_secret, tenant.zoho_refresh_token) == ("csecret-123", "1000.rt-456")
    assert "csecret-123" not in out.getvalue() and "1000.rt-456" not in out.getvalue()


def test_admin_never_shows_the_renewal_credentials(cloud, admin_client):
    sdp, accounts = cloud
    tenant = _tenant(sdp, accounts)
    page = admin_client.get(f"/admin/tickets/tenant/{tenant.pk}/change/").content.decode()
    assert "SDP Cloud token renewal" in page and "set (hidden)" in page
    assert accounts.refresh_token not in page and accounts.client_secret not in page
