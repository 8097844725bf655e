"""A support lead in a real browser: log in, open the review queue, edit and approve a note, open the dashboard."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import connections
from django.utils import timezone

from enhancements.models import Enhancement, Feedback
from enhancements.services import enhancement_process
from tests.fakes.fixtures import servicedesk_fixture
from tests.review_helpers import PASSWORD, days_ago, enhancement_make, support_lead
from tickets.models import Tenant
from tickets.services import asset_upsert, ticket_upsert

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
CREATED = servicedesk_fixture("webhook__request_created")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


@pytest.fixture
def page(monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """Return a Playwright page in Debian's headless Chromium (no browser is ever downloaded)."""
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing: apt-get install -y chromium"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls in the test are still sync.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        context = browser.new_context(viewport={"width": 1500, "height": 900})
        page = context.new_page()
        page.set_default_timeout(15_000)
        # Content-Security-Policy violations show up as console errors: collect them for the test to check.
        page.csp_violations = []  # type: ignore[attr-defined]
        page.on(
            "console",
            lambda msg: page.csp_violations.append(msg.text) if "Content Security Policy" in msg.text else None,
        )
        yield page
        context.close()
        browser.close()
        # Inside Playwright's sync API, the ORM got a connection of its own (asgiref locals follow the
        # context Playwright switched to); close it here or the test database cannot be dropped.
        connections.close_all()


def _history_for_the_dashboard(tenant: Tenant) -> None:
    """Give the dashboard 30 days of outcomes to draw (fixed seed: the screenshot is stable)."""
    rng = random.Random(4)
    outcomes = [Enhancement.Status.POSTED] * 6 + [Enhancement.Status.FAILED, Enhancement.Status.REJECTED]
    for day in range(29, 0, -1):
        for n in range(rng.randint(1, 6)):
            status = rng.choice(outcomes)
            row = enhancement_make(
                tenant,
                sdp_id=f"{day}{n}00",
                subject=f"History ticket {day}-{n}",
                status=status,
                created_at=days_ago(day),
                error="SDP refused our credentials (HTTP 401)" if status == Enhancement.Status.FAILED else "",
            )
            if status == Enhancement.Status.POSTED:
                seconds = rng.uniform(4, 40)
                done = row.created_at + (timezone.now() - days_ago(seconds / 86400))
                Enhancement.objects.filter(pk=row.pk).update(posted_at=done, finished_at=done)
                Feedback.objects.create(enhancement=row, rating=rng.choice(["helpful", "helpful", "not_helpful"]))


def test_support_lead_reviews_edits_and_approves_in_a_browser(
    page, live_server, settings, make_tenant, post_webhook, sdp
):
    # The live server speaks plain HTTP.
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = False
    sdp.add_request(CREATED["request"])
    tenant = make_tenant(
        "acme", name="Acme Corp", sdp_base_url=sdp.url, sdp_api_key=sdp.api_key, review_required=True
    ).tenant
    _history_for_the_dashboard(make_tenant("globex", name="Globex").tenant)
    # Resolved history and inventory, so the enhancement has context to show.
    ticket_upsert(
        tenant=tenant,
        sdp_id="98765",
        fields={
            "subject": "Outlook password prompts loop after MFA change",
            "description": "Outlook keeps asking for the password after the MFA change; webmail works.",
            "resolution": "Removed stale Office entries from Credential Manager and re-created the Outlook profile.",
            "status": "Resolved",
            "is_resolved": True,
        },
        source="import",
    )
    asset_upsert(tenant=tenant, ip="10.20.4.57", hostname="lt-0457", role="Laptop", owner="Dana Whitfield")
    for n, subject in enumerate(["VPN disconnects every hour", "Printer on floor 2 shows offline"]):
        enhancement_make(tenant, sdp_id=f"10430{n}", subject=subject, created_at=days_ago(0.2 + n / 10))
    response = post_webhook("acme", CREATED, secret=Tenant.objects.get(pk=tenant.pk).webhook_secret)
    enhancement_id = response.json()["enhancement_id"]
    assert enhancement_process(enhancement_id=enhancement_id) == Enhancement.Status.AWAITING_REVIEW
    support_lead("dana.lead", password=PASSWORD)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", "dana.lead")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.get_by_role("link", name="Review queue").click()
    page.wait_for_selector("#result_list")
    assert "Awaiting review" in page.inner_text("#result_list")
    page.screenshot(path=str(SCREENSHOTS / "review-queue.png"), full_page=True)

    assert page.locator("#result_list tbody tr").count() == 3
    row = page.locator("#result_list tbody tr", has_text="#104321")
    assert row.locator(".field-language_column").inner_text() == "English"  # the detected language
    row.locator("th a").click()
    page.wait_for_selector("#id_note_html")
    assert "English (en)" in page.inner_text(".field-ticket_text")
    assert "Ticket language: English" in page.inner_text(".field-note_preview")
    edit = "<p><b>Lead check:</b> confirmed with Dana by phone; start with step 1.</p>"
    page.fill("#id_note_html", edit + page.input_value("#id_note_html"))
    page.screenshot(path=str(SCREENSHOTS / "enhancement-review.png"), full_page=True)
    page.get_by_role("button", name="Approve and post").click()
    page.wait_for_selector(".messagelist .success")
    assert "Approved and posted to SDP request #104321" in page.inner_text(".messagelist")
    assert "Posted" in page.inner_text(".field-status_column")
    page.screenshot(path=str(SCREENSHOTS / "enhancement-approved.png"), full_page=True)

    notes = sdp.notes["104321"]
    assert len(notes) == 1 and notes[0]["description"].startswith(edit)
    approved = Enhancement.objects.get(pk=enhancement_id)
    assert approved.status == Enhancement.Status.POSTED and approved.reviewed_by.username == "dana.lead"

    page.goto(f"{live_server.url}/admin/")
    page.get_by_role("link", name="Dashboard").click()
    page.wait_for_selector(".te-chart svg rect")
    assert page.inner_text("#te-queue") == "2"
    page.screenshot(path=str(SCREENSHOTS / "dashboard.png"), full_page=True)
    # The admin works under its Content-Security-Policy: the header is sent and nothing on the way was blocked.
    policy = page.request.get(f"{live_server.url}/admin/").headers.get("content-security-policy", "")
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    # The tenant filter submits itself on change (dashboard.js, no inline handler).
    with page.expect_navigation():
        page.select_option("#id_tenant", label="Globex (globex)")
    assert "tenant=" in page.url
    assert page.csp_violations == []
