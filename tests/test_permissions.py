"""Each permission boundary of the Support lead and Operator groups, checked through the admin."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse

from enhancements.models import Enhancement, Feedback
from enhancements.roles import OPERATOR, SUPPORT_LEAD
from tests.review_helpers import enhancement_make, operator, staff_user, support_lead
from tickets.models import Tenant

pytestmark = pytest.mark.django_db

SECRET_KEY_VALUE = "sdp-key-that-must-stay-hidden"


@pytest.fixture
def acme(make_tenant):
    return make_tenant("acme", sdp_base_url="http://127.0.0.1:9", sdp_api_key=SECRET_KEY_VALUE).tenant


def _login(client, user):
    client.force_login(user)
    return client


def _action(enhancement: Enhancement, name: str) -> str:
    return reverse(f"admin:enhancements_enhancement_{name}", args=[enhancement.pk])


def test_migration_created_both_groups_with_their_permissions():
    # The data migration ran when the test database was built.
    lead = {p.codename for p in Group.objects.get(name=SUPPORT_LEAD).permissions.all()}
    ops = {p.codename for p in Group.objects.get(name=OPERATOR).permissions.all()}
    assert {"view_tenant", "view_ticket", "approve_enhancement", "rerun_enhancement", "add_feedback"} <= lead
    assert "change_enhancement" in lead and "change_tenant" not in lead and "view_apitoken" not in lead
    assert {"add_tenant", "change_tenant", "delete_tenant", "change_ticket", "add_asset", "add_apitoken"} <= ops
    assert "approve_enhancement" not in ops and "change_enhancement" not in ops


# --- support lead -------------------------------------------------------------------------------------
def test_support_lead_sees_tenants_but_never_their_secrets(client, acme):
    _login(client, support_lead())
    secret = Tenant.objects.get(pk=acme.pk).webhook_secret
    for url in ("/admin/tickets/tenant/", f"/admin/tickets/tenant/{acme.pk}/change/"):
        response = client.get(url)
        html = response.content.decode()
        assert response.status_code == 200, url
        assert SECRET_KEY_VALUE not in html and secret not in html
        assert "set (hidden)" in html
    html = client.get(f"/admin/tickets/tenant/{acme.pk}/change/").content.decode()
    assert 'name="new_sdp_api_key"' not in html and 'name="rotate_webhook_secret"' not in html
    assert "Test connection" not in html
    assert "/webhook/servicedesk/acme/" in html


def test_support_lead_cannot_change_secrets_or_tenants(client, acme):
    _login(client, support_lead())
    secret = Tenant.objects.get(pk=acme.pk).webhook_secret
    data = {
        "name": "Hijacked",
        "sdp_base_url": "http://127.0.0.1:9",
        "sdp_auth_type": "authtoken",
        "webhook_auth": "hmac",
        "rate_limit_per_minute": "600",
        "new_sdp_api_key": "attacker-key",
        "rotate_webhook_secret": "on",
    }
    assert client.post(f"/admin/tickets/tenant/{acme.pk}/change/", data).status_code == 403
    assert client.post("/admin/tickets/tenant/add/", {**data, "slug": "new"}).status_code == 403
    assert client.post(f"/admin/tickets/tenant/{acme.pk}/test-connection/").status_code == 403
    assert client.post(f"/admin/tickets/tenant/{acme.pk}/delete/", {"post": "yes"}).status_code == 403
    tenant = Tenant.objects.get(pk=acme.pk)
    assert (tenant.name, tenant.sdp_api_key, tenant.webhook_secret) == ("Acme", SECRET_KEY_VALUE, secret)
    assert client.get("/admin/enhancements/apitoken/").status_code == 403


def test_support_lead_views_tickets_but_does_not_edit_them(client, acme):
    enhancement = enhancement_make(acme)
    _login(client, support_lead())
    url = f"/admin/tickets/ticket/{enhancement.ticket_id}/change/"
    assert client.get(url).status_code == 200
    assert client.post(url, {"subject": "changed"}).status_code == 403
    assert client.get("/admin/tickets/ticket/add/").status_code == 403


def test_support_lead_reviews_approves_reruns_and_rates(client, acme):
    enhancement = enhancement_make(acme)
    _login(client, support_lead())
    html = client.get(reverse("admin:enhancements_enhancement_change", args=[enhancement.pk])).content.decode()
    assert "Approve and post" in html and 'name="note_html"' in html and "Save rating" in html
    client.post(_action(enhancement, "feedback"), {"feedback_rating": "helpful"})
    client.post(_action(enhancement, "approve"))
    enhancement.refresh_from_db()
    # The acme tenant posts to a closed port: approving reached SDP (and reports the failure).
    assert "Could not connect to SDP" in enhancement.error
    client.post(_action(enhancement, "rerun"))
    assert Enhancement.objects.filter(ticket=enhancement.ticket).count() == 2
    assert Feedback.objects.filter(enhancement=enhancement, user__username="lead").exists()
    assert client.get(reverse("admin:enhancements_dashboard")).status_code == 200
    assert client.post(f"/admin/enhancements/enhancement/{enhancement.pk}/delete/", {"post": "yes"}).status_code == 403


# --- operator -----------------------------------------------------------------------------------------
def test_operator_manages_tenants_but_cannot_review(client, acme):
    enhancement = enhancement_make(acme)
    _login(client, operator())
    assert client.get("/admin/tickets/tenant/add/").status_code == 200
    assert client.get("/admin/enhancements/apitoken/add/").status_code == 200
    html = client.get(reverse("admin:enhancements_enhancement_change", args=[enhancement.pk])).content.decode()
    assert "Approve and post" not in html and 'name="note_html"' not in html and "Save rating" not in html
    for name in ("approve", "reject", "rerun", "repost", "feedback"):
        assert client.post(_action(enhancement, name), {"feedback_rating": "helpful"}).status_code == 403, name
    change = client.post(
        reverse("admin:enhancements_enhancement_change", args=[enhancement.pk]), {"note_html": "<p>x</p>"}
    )
    assert change.status_code == 403
    response = client.post(
        "/admin/enhancements/enhancement/", {"action": "approve_selected", "_selected_action": [str(enhancement.pk)]}
    )
    assert response.status_code == 200  # Django answers an unknown action with the list again
    enhancement.refresh_from_db()
    assert enhancement.status == Enhancement.Status.AWAITING_REVIEW and enhancement.reviewed_by is None
    assert not Feedback.objects.exists()


def test_operator_creates_an_api_token_and_sees_its_key_once(client, acme):
    _login(client, operator())
    response = client.post("/admin/enhancements/apitoken/add/", {"name": "acme button", "tenant": str(acme.pk)})
    html = response.content.decode()
    key = html.split('class="te-secret"')[1].split(">", 1)[1].split("<", 1)[0]
    assert key.startswith("te_")
    listing = client.get("/admin/enhancements/apitoken/").content.decode()
    assert key not in listing and key[:10] in listing


# --- no role, no login --------------------------------------------------------------------------------
def test_staff_without_a_role_sees_nothing(client, acme):
    enhancement = enhancement_make(acme)
    _login(client, staff_user("newcomer"))
    assert client.get("/admin/enhancements/enhancement/").status_code == 403
    assert client.get(reverse("admin:enhancements_dashboard")).status_code == 403
    assert client.post(_action(enhancement, "approve")).status_code == 403
    assert client.get(f"/admin/tickets/tenant/{acme.pk}/change/").status_code == 403
    assert "Dashboard" not in client.get("/admin/").content.decode()


def test_anonymous_is_sent_to_the_login_page(client, acme):
    enhancement = enhancement_make(acme)
    for url in (
        "/admin/enhancements/enhancement/",
        reverse("admin:enhancements_dashboard"),
        _action(enhancement, "approve"),
    ):
        response = client.post(url) if url.endswith("/approve/") else client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"], url
    enhancement.refresh_from_db()
    assert enhancement.status == Enhancement.Status.AWAITING_REVIEW
