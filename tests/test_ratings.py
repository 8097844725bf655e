"""Ratings through the API: one per enhancement per rater, and each says which token it came through."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from enhancements.models import Enhancement, Feedback
from enhancements.services import api_token_create
from tests.review_helpers import enhancement_make

pytestmark = pytest.mark.django_db


def _client(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


@pytest.fixture
def posted(make_tenant):
    tenant = make_tenant("acme", sdp_base_url="https://sdp.acme.example").tenant
    return tenant, enhancement_make(tenant, status=Enhancement.Status.POSTED)


def test_one_token_cannot_stuff_anonymous_ratings(posted):
    tenant, enhancement = posted
    _, key = api_token_create(tenant=tenant, name="SDP button")
    api = _client(key)
    url = f"/api/v1/enhancements/{enhancement.pk}/feedback/"
    for rating in ("helpful", "helpful", "helpful", "not_helpful"):
        assert api.post(url, {"rating": rating}, format="json").status_code == 201
    (only,) = Feedback.objects.filter(enhancement=enhancement)
    assert only.rating == "not_helpful" and only.api_token.name == "SDP button"
    detail = api.get(f"/api/v1/enhancements/{enhancement.pk}/").json()
    assert (detail["helpful"], detail["not_helpful"]) == (0, 1)


def test_a_named_technician_rates_once_and_the_token_is_recorded(posted):
    tenant, enhancement = posted
    _, key = api_token_create(tenant=tenant, name="SDP button")
    api = _client(key)
    url = f"/api/v1/enhancements/{enhancement.pk}/feedback/"
    answer = api.post(url, {"rating": "helpful", "technician_email": "a@acme.example"}, format="json").json()
    assert answer["rated_via"] == "SDP button"
    api.post(url, {"rating": "not_helpful", "technician_email": "A@acme.example"}, format="json")
    api.post(url, {"rating": "helpful", "technician_email": "b@acme.example"}, format="json")
    rows = {(f.technician_email, f.rating, f.api_token.name) for f in Feedback.objects.filter(enhancement=enhancement)}
    assert rows == {("a@acme.example", "not_helpful", "SDP button"), ("b@acme.example", "helpful", "SDP button")}


def test_two_tokens_are_two_raters(posted):
    tenant, enhancement = posted
    url = f"/api/v1/enhancements/{enhancement.pk}/feedback/"
    for name in ("button", "portal"):
        _, key = api_token_create(tenant=tenant, name=name)
        assert _client(key).post(url, {"rating": "helpful"}, format="json").status_code == 201
    assert sorted(f.api_token.name for f in Feedback.objects.filter(enhancement=enhancement)) == ["button", "portal"]
