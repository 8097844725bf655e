"""The read API: token auth with per-tenant scoping, filters, pagination, feedback, schema and docs."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from enhancements.models import Enhancement, Feedback
from enhancements.services import api_token_create, api_token_revoke
from tests.review_helpers import days_ago, enhancement_make, operator, staff_user, support_lead

pytestmark = pytest.mark.django_db

LIST = "/api/v1/enhancements/"


@pytest.fixture
def acme(make_tenant):
    return make_tenant("acme", sdp_base_url="https://sdp.acme.example").tenant


@pytest.fixture
def globex(make_tenant):
    return make_tenant("globex").tenant


def _client(key: str | None = None, scheme: str = "Token") -> APIClient:
    client = APIClient()
    if key:
        client.credentials(HTTP_AUTHORIZATION=f"{scheme} {key}")
    return client


@pytest.fixture
def acme_api(acme):
    _, key = api_token_create(tenant=acme, name="acme SDP button")
    return _client(key)


def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["error"] == code and isinstance(body["detail"], str) and body["detail"]
    return body


def test_no_token_is_401_in_the_project_error_shape(acme):
    response = _client().get(LIST)
    _error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"] == "Token"


@pytest.mark.parametrize("header", ["Token nope", "Bearer nope", "Token a b"])
def test_bad_token_is_401(acme, header):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    _error(client.get(LIST), 401, "authentication_failed")


def test_revoked_token_is_401(acme):
    token, key = api_token_create(tenant=acme, name="old")
    assert _client(key).get(LIST).status_code == 200
    api_token_revoke(token_id=token.pk)
    _error(_client(key).get(LIST), 401, "authentication_failed")


def test_token_sees_only_its_tenant(acme, globex, acme_api):
    mine = enhancement_make(acme, sdp_id="1")
    theirs = enhancement_make(globex, sdp_id="2")
    body = acme_api.get(LIST).json()
    assert [row["id"] for row in body["results"]] == [str(mine.pk)]
    assert body["results"][0]["tenant"] == "acme"
    assert body["results"][0]["ticket"] == {
        "sdp_id": "1",
        "subject": "Outlook keeps asking for the password",
        "url": "https://sdp.acme.example/WorkOrder.do?woMode=viewWO&woID=1",
    }
    assert acme_api.get(f"{LIST}?tenant=globex").json()["results"] == []
    _error(acme_api.get(f"{LIST}{theirs.pk}/"), 404, "not_found")
    _error(acme_api.post(f"{LIST}{theirs.pk}/feedback/", {"rating": "helpful"}, format="json"), 404, "not_found")


def test_bearer_keyword_works_too(acme):
    _, key = api_token_create(tenant=acme, name="bearer")
    assert _client(key, scheme="Bearer").get(LIST).status_code == 200


def test_filters(acme, acme_api):
    old = enhancement_make(acme, sdp_id="10", status=Enhancement.Status.POSTED, created_at=days_ago(10))
    failed = enhancement_make(acme, sdp_id="11", status=Enhancement.Status.FAILED, created_at=days_ago(1))
    waiting = enhancement_make(acme, sdp_id="12")

    def ids(query: str) -> list[str]:
        response = acme_api.get(LIST + query)
        assert response.status_code == 200, response.content
        return [row["id"] for row in response.json()["results"]]

    assert ids("") == [str(waiting.pk), str(failed.pk), str(old.pk)]
    assert ids("?status=failed") == [str(failed.pk)]
    assert ids("?status=failed&status=posted") == [str(failed.pk), str(old.pk)]
    assert ids("?ticket=12") == [str(waiting.pk)]
    assert ids("?tenant=acme&ticket=10") == [str(old.pk)]
    assert ids(f"?date={old.created_at.date().isoformat()}") == [str(old.pk)]
    assert ids(f"?created_after={days_ago(2).isoformat().replace('+00:00', 'Z')}") == [str(waiting.pk), str(failed.pk)]
    assert ids(f"?created_before={days_ago(5).isoformat().replace('+00:00', 'Z')}") == [str(old.pk)]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("?status=bogus", "status"),
        ("?date=yesterday", "date"),
        ("?created_after=soon", "created_after"),
        # An empty value is not "no filter" (DRF's form semantics listed everything for these).
        ("?date=", "date"),
        ("?created_after=&created_before=", "created_before"),
        ("?tenant=", "tenant"),
        ("?status=", "status"),
    ],
)
def test_invalid_filters_are_400_with_fields(acme, acme_api, query, field):
    body = _error(acme_api.get(LIST + query), 400, "invalid_payload")
    assert field in body["fields"]


def test_list_is_paginated(acme, acme_api):
    for i in range(3):
        enhancement_make(acme, sdp_id=str(100 + i))
    assert acme_api.get(LIST).json()["count"] == 3
    first = acme_api.get(LIST + "?page_size=2").json()
    assert first["count"] == 3 and len(first["results"]) == 2 and first["next"]
    second = acme_api.get(first["next"]).json()
    assert len(second["results"]) == 1 and second["next"] is None


def test_detail_has_note_output_context_timings_and_ratings(acme, acme_api):
    enhancement = enhancement_make(acme, status=Enhancement.Status.POSTED)
    Feedback.objects.create(enhancement=enhancement, rating="helpful")
    body = acme_api.get(f"{LIST}{enhancement.pk}/").json()
    assert body["note_html"] == enhancement.note_html
    assert body["output"]["summary"].startswith("Outlook is looping")
    assert body["context"]["similar_tickets"][0]["sdp_id"] == "98765"
    assert body["timings"]["generate"] == 40
    assert (body["prompt_tokens"], body["completion_tokens"], body["helpful"], body["not_helpful"]) == (120, 80, 1, 0)
    assert "note_html" not in acme_api.get(LIST).json()["results"][0]


def test_technician_feedback(acme, acme_api):
    enhancement = enhancement_make(acme, status=Enhancement.Status.POSTED)
    url = f"{LIST}{enhancement.pk}/feedback/"
    first = acme_api.post(url, {"rating": "not_helpful", "technician_email": "Tech@Acme.example"}, format="json")
    assert first.status_code == 201, first.content
    assert first.json()["rating"] == "not_helpful" and first.json()["enhancement"] == str(enhancement.pk)
    again = {"rating": "helpful", "comment": "Right cause", "technician_email": "tech@acme.example"}
    assert acme_api.post(url, again, format="json").status_code == 201
    feedback = Feedback.objects.get(enhancement=enhancement)
    assert (feedback.rating, feedback.comment, feedback.technician_email) == (
        "helpful",
        "Right cause",
        "tech@acme.example",
    )
    assert feedback.user is None


def test_invalid_feedback_is_400_with_fields(acme, acme_api):
    enhancement = enhancement_make(acme)
    body = _error(
        acme_api.post(f"{LIST}{enhancement.pk}/feedback/", {"rating": "meh"}, format="json"), 400, "invalid_payload"
    )
    assert "rating" in body["fields"]
    _error(
        acme_api.post(f"{LIST}{enhancement.pk}/feedback/", b"{", content_type="application/json"), 400, "invalid_json"
    )
    _error(acme_api.get(f"{LIST}not-a-uuid/"), 404, "not_found")
    _error(acme_api.delete(f"{LIST}{enhancement.pk}/"), 405, "method_not_allowed")


def test_signed_in_staff_need_the_view_permission(acme, globex):
    enhancement_make(acme, sdp_id="1")
    enhancement_make(globex, sdp_id="2")
    client = APIClient()
    client.force_login(support_lead())
    assert client.get(LIST).json()["count"] == 2  # staff see every tenant
    nobody = APIClient()
    nobody.force_login(staff_user("nobody"))
    _error(nobody.get(LIST), 403, "permission_denied")


def test_session_feedback_needs_add_feedback(acme):
    enhancement = enhancement_make(acme, status=Enhancement.Status.POSTED)
    url = f"{LIST}{enhancement.pk}/feedback/"
    ops = APIClient(enforce_csrf_checks=False)
    ops.force_login(operator())
    _error(ops.post(url, {"rating": "helpful"}, format="json"), 403, "permission_denied")
    lead = APIClient()
    lead.force_login(support_lead())
    assert lead.post(url, {"rating": "helpful"}, format="json").status_code == 201
    assert Feedback.objects.get().user.username == "lead"


def test_openapi_schema_and_docs_are_served_without_a_cdn(client):
    schema = client.get("/api/v1/schema/?format=json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert {"/api/v1/enhancements/", "/api/v1/enhancements/{id}/", "/api/v1/enhancements/{id}/feedback/"} <= set(paths)
    assert "tenantToken" in schema.json()["components"]["securitySchemes"]
    for page in ("/api/v1/docs/", "/api/v1/redoc/"):
        html = client.get(page).content.decode()
        assert "/api/v1/docs/assets/" in html and "cdn" not in html.lower(), page
    asset = client.get("/api/v1/docs/assets/swagger-ui-dist/swagger-ui-bundle.js")
    assert asset.status_code == 200
    assert client.get("/api/v1/docs/assets/redoc/bundles/redoc.standalone.js").status_code == 200
    assert client.get("/api/v1/docs/assets/../settings.py").status_code == 404
