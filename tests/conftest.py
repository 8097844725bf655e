"""Shared fixtures: tenants, signed webhooks, and the SDP / OpenAI fakes on loopback."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings
from django.test import Client

from enhancements import webhooks
from tests.fakes.openai import FakeOpenAI
from tests.fakes.sdp import FakeServiceDesk
from tests.signing import sign_webhook_meta
from tests.triage_helpers import Northwind, northwind_create
from tickets.search.hybrid import helpers_shutdown
from tickets.search.languages import history_languages_forget
from tickets.services import TenantResult, tenant_create_or_update


@pytest.fixture(autouse=True)
def _test_settings(settings: Any) -> None:
    settings.SDP_ALLOW_INSECURE_URLS = True
    settings.ENHANCEMENT_RETRY_BASE = 0.01
    settings.ENHANCEMENT_RETRY_MAX = 0.05
    settings.LLM_PROVIDER = "offline"


@pytest.fixture(autouse=True)
def _search_helpers_closed() -> Iterator[None]:
    """Close the hybrid search's helper connections after each test (none may outlive the test database), and
    forget the per-process caches keyed by primary keys, which a rolled-back SQLite test database reuses."""
    yield
    helpers_shutdown()
    history_languages_forget()
    webhooks._leases.clear()


@pytest.fixture
def make_tenant(db: None) -> Callable[..., TenantResult]:
    """Return a factory of tenants (hmac auth unless told otherwise)."""

    def make(slug: str = "acme", **fields: Any) -> TenantResult:
        fields.setdefault("name", slug.title())
        return tenant_create_or_update(slug=slug, **fields)

    return make


@pytest.fixture
def tenant(make_tenant: Callable[..., TenantResult]) -> TenantResult:
    """Return a dry-run tenant (no SDP credentials) with hmac auth."""
    return make_tenant("acme")


@pytest.fixture
def post_webhook(client: Client) -> Callable[..., Any]:
    """Return a function that POSTs a body to a tenant's webhook, signed unless told otherwise."""

    def post(
        slug: str,
        payload: Any,
        *,
        secret: str | None = None,
        token: str | None = None,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        msg_id: str | None = None,
        timestamp: float | None = None,
    ) -> Any:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        extra: dict[str, str] = {}
        if secret:
            extra.update(sign_webhook_meta(secret, body, msg_id=msg_id, timestamp=timestamp))
        if token:
            extra["HTTP_X_SERVICEDESK_TOKEN"] = token
        extra.update(headers or {})
        return client.generic("POST", f"/webhook/servicedesk/{slug}/", body, content_type=content_type, **extra)

    return post


@pytest.fixture
def sdp() -> Iterator[FakeServiceDesk]:
    """Return a running on-premises SDP fake."""
    with FakeServiceDesk(auth="authtoken", api_key="sdp-test-key") as fake:
        yield fake


@pytest.fixture
def northwind(make_tenant: Callable[..., TenantResult], sdp: FakeServiceDesk) -> Northwind:
    """Return the triage tests' tenant: credentials, labelled history, SDP lists cached, a calibration."""
    return northwind_create(make_tenant, sdp)


@pytest.fixture
def openai_fake(settings: Any) -> Iterator[FakeOpenAI]:
    """Return a running OpenAI-compatible fake and point the openai provider at it (no output mode remembered)."""
    from enhancements.llm_structured import modes_forget

    # A port reused from an earlier test must not inherit that server's remembered mode.
    modes_forget()
    with FakeOpenAI() as fake:
        settings.LLM_PROVIDER = "openai"
        settings.OPENAI_API_KEY = fake.api_key
        settings.OPENAI_BASE_URL = fake.url
        settings.OPENAI_MODEL = "fake-model"
        settings.LLM_TIMEOUT = 2.0
        yield fake


@pytest.fixture(scope="session", autouse=True)
def _clean_redis() -> None:
    """Start the Redis run from an empty test database (no stale broker tasks)."""
    if settings.REDIS_URL:
        import redis

        redis.Redis.from_url(settings.REDIS_URL).flushdb()
