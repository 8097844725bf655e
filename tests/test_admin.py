"""The review screen in Django admin: list, detail, review actions, feedback, dashboard and the other admins."""

from __future__ import annotations

import re
import threading

import pytest
from django.contrib.admin.models import LogEntry
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from enhancements.models import Enhancement, Feedback
from enhancements.services import enhancement_process
from tests.fakes.fixtures import servicedesk_fixture
from tests.processes import wait_for
from tests.review_helpers import days_ago, enhancement_make, operator, support_lead
from tickets.models import Asset, KnowledgeArticle, Tenant, Ticket

pytestmark = pytest.mark.django_db

CREATED = servicedesk_fixture("webhook__request_created")
CHANGELIST = "/admin/enhancements/enhancement/"


def _change_url(enhancement: Enhancement) -> str:
    return reverse("admin:enhancements_enhancement_change", args=[enhancement.pk])


def _action_url(enhancement: Enhancement, action: str) -> str:
    return reverse(f"admin:enhancements_enhancement_{action}", args=[enhancement.pk])


def _messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


@pytest.fixture
def review_tenant(make_tenant, sdp):
    """Return a tenant that requires review and posts to the SDP fake."""
    sdp.add_request(CREATED["request"])
    return make_tenant("acme", sdp_base_url=sdp.url, sdp_api_key=sdp.api_key, review_required=True).tenant


@pytest.fixture
def awaiting(review_tenant, post_webhook):
    """Return an enhancement held for review by the real pipeline (webhook, then one worker attempt)."""
    secret = Tenant.objects.get(pk=review_tenant.pk).webhook_secret
    response = post_webhook("acme", CREATED, secret=secret)
    enhancement_id = response.json()["enhancement_id"]
    assert enhancement_process(enhancement_id=enhancement_id) == Enhancement.Status.AWAITING_REVIEW
    return Enhancement.objects.get(pk=enhancement_id)


@pytest.fixture
def lead_client(client):
    client.force_login(support_lead())
    return client


# --- list ---------------------------------------------------------------------------------------------
def test_changelist_shows_badge_sdp_link_rating_and_finish_time(lead_client, review_tenant):
    done = enhancement_make(review_tenant, status=Enhancement.Status.POSTED, sdp_id="7001", subject="VPN drops")
    Enhancement.objects.filter(pk=done.pk).update(finished_at=done.created_at + (days_ago(0) - days_ago(0.0001)))
    Feedback.objects.create(enhancement=done, rating=Feedback.Rating.HELPFUL)
    response = lead_client.get(CHANGELIST)
    html = response.content.decode()
    assert response.status_code == 200
    assert 'class="te-badge"' in html and "Posted" in html
    assert f"{review_tenant.sdp_base_url}/WorkOrder.do?woMode=viewWO&amp;woID=7001" in html
    assert "VPN drops" in html and "Helpful" in html and "8.6 s" in html


def test_changelist_query_count_does_not_grow_with_rows_and_counts_are_bounded(lead_client, review_tenant):
    enhancement_make(review_tenant, sdp_id="1")
    with CaptureQueriesContext(connection) as few:
        assert lead_client.get(CHANGELIST).status_code == 200
    for i in range(2, 40):
        done = enhancement_make(review_tenant, sdp_id=str(i), status=Enhancement.Status.POSTED)
        Feedback.objects.create(enhancement=done, rating=Feedback.Rating.NOT_HELPFUL)
    with CaptureQueriesContext(connection) as many:
        response = lead_client.get(CHANGELIST)
    assert response.status_code == 200 and "39 enhancements" in response.content.decode()
    assert len(many.captured_queries) == len(few.captured_queries)
    counts = [q["sql"] for q in many.captured_queries if "COUNT(" in q["sql"].upper()]
    assert counts and all("LIMIT" in sql.upper() for sql in counts), counts


def test_changelist_says_more_than_the_cap_instead_of_counting_everything(lead_client, review_tenant, monkeypatch):
    from project.admin_helpers import CappedCountPaginator

    monkeypatch.setattr(CappedCountPaginator, "CAP", 3)
    for i in range(5):
        enhancement_make(review_tenant, sdp_id=str(i))
    html = lead_client.get(CHANGELIST).content.decode()
    assert "More than 3 enhancements" in html


def test_changelist_filters_and_search(lead_client, review_tenant, make_tenant):
    other = make_tenant("globex").tenant
    enhancement_make(review_tenant, sdp_id="111", subject="Printer jam on floor 2")
    failed = enhancement_make(other, sdp_id="222", subject="Mailbox full", status=Enhancement.Status.FAILED)
    Feedback.objects.create(enhancement=failed, rating=Feedback.Rating.NOT_HELPFUL)

    def listed(query: str) -> set[str]:
        html = lead_client.get(CHANGELIST + query).content.decode()
        return {s for s in ("Printer jam", "Mailbox full") if s in html}

    assert listed("?status__exact=failed") == {"Mailbox full"}
    assert listed(f"?tenant__id__exact={review_tenant.pk}") == {"Printer jam"}
    assert listed("?rating=not_helpful") == {"Mailbox full"}
    assert listed("?rating=none") == {"Printer jam"}
    assert listed("?provider=offline") == {"Printer jam", "Mailbox full"}
    assert listed("?q=111") == {"Printer jam"}
    assert listed("?q=mailbox") == {"Mailbox full"}
    today = days_ago(0)
    assert listed(f"?created_at__year={today.year}&created_at__month={today.month}") == {"Printer jam", "Mailbox full"}


def test_changelist_shows_and_filters_the_tickets_detected_language(lead_client, review_tenant):
    german = enhancement_make(review_tenant, sdp_id="301", subject="Drucker druckt leere Seiten")
    Ticket.objects.filter(pk=german.ticket_id).update(language="de")
    enhancement_make(review_tenant, sdp_id="302", subject="Mailbox full")
    html = lead_client.get(CHANGELIST).content.decode()
    assert "column-language_column" in html and "ticket language" in html
    (row,) = [r for r in html.split("<tr") if "Drucker druckt" in r]
    assert '<td class="field-language_column">German</td>' in row

    def listed(query: str) -> set[str]:
        page = lead_client.get(CHANGELIST + query).content.decode()
        return {s for s in ("Drucker druckt", "Mailbox full") if s in page}

    assert listed("?language=de") == {"Drucker druckt"}
    assert listed("?language=none") == {"Mailbox full"}
    assert listed("?language=fr") == set()


# --- detail -------------------------------------------------------------------------------------------
def test_detail_shows_note_ticket_context_timings_tokens_and_error(lead_client, review_tenant):
    enhancement = enhancement_make(review_tenant, error="LLM unavailable, offline note used: timeout")
    html = lead_client.get(_change_url(enhancement)).content.decode()
    assert "Outlook is looping on the password prompt" in html  # the note, rendered
    assert "Since this morning Outlook prompts" in html  # the ticket text
    assert "<th>Language</th><td>not detected</td>" in html
    Ticket.objects.filter(pk=enhancement.ticket_id).update(language="fr")
    assert "<th>Language</th><td>French (fr)</td>" in lead_client.get(_change_url(enhancement)).content.decode()
    assert "#98765" in html and "0.812" in html and "WorkOrder.do?woMode=viewWO&amp;woID=98765" in html
    assert "lt-0457" in html and "Resetting Outlook profiles" in html
    assert "<h4>Similar resolved tickets</h4><table class='te-table'><tr><th>Ticket</th><th>Subject</th>" in html
    assert "<h4>Assets</h4><table class='te-table'><tr><th>Hostname</th><th>IP</th><th>Role</th>" in html
    assert "generate: 40 ms" in html and "120 prompt + 80 completion = 200" in html
    assert "LLM unavailable, offline note used: timeout" in html
    assert 'name="note_html"' in html  # editable while awaiting review
    assert "Approve and post" in html and "Reject" in html


def test_note_is_read_only_once_posted(lead_client, review_tenant):
    enhancement = enhancement_make(review_tenant, status=Enhancement.Status.POSTED)
    html = lead_client.get(_change_url(enhancement)).content.decode()
    assert 'name="note_html"' not in html and "Approve and post" not in html
    assert "Re-run" in html


def test_saving_an_edited_note_sanitises_it(lead_client, review_tenant):
    enhancement = enhancement_make(review_tenant)
    edited = '<p onclick="steal()">Checked: <b>reboot</b></p><script>alert(1)</script><img src=x onerror=alert(2)>'
    response = lead_client.post(_change_url(enhancement), {"note_html": edited, "_continue": "1"})
    assert response.status_code == 302
    enhancement.refresh_from_db()
    assert enhancement.note_html.startswith("<p>Checked: <b>reboot</b></p>")
    assert "script" not in enhancement.note_html.lower().replace(f"ticket-enhancer:{enhancement.pk}", "")
    assert "onerror" not in enhancement.note_html and "onclick" not in enhancement.note_html
    assert f"ticket-enhancer:{enhancement.pk}" in enhancement.note_html


# --- actions ------------------------------------------------------------------------------------------
def test_approve_posts_the_edited_note_once_and_records_who_and_when(lead_client, awaiting, sdp):
    response = lead_client.post(
        _action_url(awaiting, "approve"), {"note_html": "<p>Checked by the lead: clear the cache.</p>"}, follow=True
    )
    assert any("Approved and posted" in m for m in _messages(response))
    awaiting.refresh_from_db()
    assert awaiting.status == Enhancement.Status.POSTED
    assert awaiting.reviewed_by.username == "lead" and awaiting.reviewed_at is not None
    notes = sdp.notes["104321"]
    assert len(notes) == 1 and notes[0]["description"].startswith("<p>Checked by the lead: clear the cache.</p>")
    assert notes[0]["show_to_requester"] is False
    assert LogEntry.objects.filter(object_id=str(awaiting.pk), change_message__contains="Approved").exists()

    again = lead_client.post(_action_url(awaiting, "approve"), {"note_html": "<p>other</p>"}, follow=True)
    assert any("Nothing done" in m for m in _messages(again))
    assert len(sdp.notes["104321"]) == 1


def test_approve_on_a_transient_sdp_error_keeps_it_reviewable_then_posts_once(lead_client, awaiting, sdp):
    sdp.fail_next(1, 500, method="POST")
    response = lead_client.post(_action_url(awaiting, "approve"), follow=True)
    assert any("Not posted: ServiceDesk Plus: SDP had a server error (HTTP 500)" in m for m in _messages(response))
    awaiting.refresh_from_db()
    assert awaiting.status == Enhancement.Status.AWAITING_REVIEW and awaiting.reviewed_at is None
    assert "SDP had a server error" in awaiting.error
    assert len(sdp.notes["104321"]) == 0

    lead_client.post(_action_url(awaiting, "approve"))
    awaiting.refresh_from_db()
    assert awaiting.status == Enhancement.Status.POSTED and awaiting.error == ""
    assert len(sdp.notes["104321"]) == 1


def test_approve_on_a_permanent_sdp_error_fails_and_repost_then_posts(lead_client, awaiting, sdp):
    sdp.fail_next(1, 401, method="POST")
    response = lead_client.post(_action_url(awaiting, "approve"), follow=True)
    assert any("SDP refused our credentials (HTTP 401" in m for m in _messages(response))
    awaiting.refresh_from_db()
    assert awaiting.status == Enhancement.Status.FAILED and "HTTP 401" in awaiting.error
    assert "Re-post" in lead_client.get(_change_url(awaiting)).content.decode()

    response = lead_client.post(_action_url(awaiting, "repost"), follow=True)
    assert any("Re-posted to SDP request #104321" in m for m in _messages(response))
    awaiting.refresh_from_db()
    assert awaiting.status == Enhancement.Status.POSTED
    assert len(sdp.notes["104321"]) == 1
    # A second re-post (double click) does nothing.
    lead_client.post(_action_url(awaiting, "repost"))
    assert len(sdp.notes["104321"]) == 1
    assert LogEntry.objects.filter(object_id=str(awaiting.pk), change_message__startswith="Re-posted").count() == 1


def test_a_repost_in_flight_is_not_taken_for_a_dead_worker_by_the_sweep(transactional_db, awaiting, sdp):
    """The row still carried the beat of the worker that generated it; the sweep re-queued it mid-post."""
    from datetime import timedelta

    from django.db import connections
    from django.utils import timezone

    from enhancements.services import enhancement_approve, enhancement_repost, enhancement_sweep

    # A permanent SDP error on approval leaves the row FAILED with its note, ready for a re-post.
    sdp.fail_next(1, 401, method="POST")
    enhancement_approve(enhancement_id=str(awaiting.pk), user=support_lead())
    awaiting.refresh_from_db()
    assert awaiting.status == Enhancement.Status.FAILED and awaiting.heartbeat_at is not None
    # Minutes later a lead re-posts: the generating worker's last beat is old by now.
    Enhancement.objects.filter(pk=awaiting.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=10))
    # SDP stores the note at once but answers after 2 s: the post is in flight while the sweep runs.
    sdp.fail_next(1, "timeout", method="POST", path_contains="notes", delay=2.0, process=True)
    results: list = []

    def repost() -> None:
        try:
            results.append(enhancement_repost(enhancement_id=str(awaiting.pk), user=None))
        finally:
            connections.close_all()

    thread = threading.Thread(target=repost)
    thread.start()
    wait_for(lambda: sdp.notes.get("104321"), timeout=10, interval=0.02, what="the re-post to reach SDP")
    swept = enhancement_sweep()
    thread.join(timeout=20)
    assert results and results[0].changed, results
    assert swept.get("recovered", 0) == 0, swept
    awaiting.refresh_from_db()
    assert awaiting.status == Enhancement.Status.POSTED
    assert len(sdp.notes["104321"]) == 1


def test_reject_never_posts_and_is_idempotent(lead_client, awaiting, sdp):
    lead_client.post(_action_url(awaiting, "reject"))
    awaiting.refresh_from_db()
    assert awaiting.status == Enhancement.Status.REJECTED and awaiting.reviewed_by.username == "lead"
    response = lead_client.post(_action_url(awaiting, "approve"), follow=True)
    assert any("Nothing done: the enhancement is rejected" in m for m in _messages(response))
    assert not sdp.notes
    assert LogEntry.objects.filter(object_id=str(awaiting.pk)).count() == 1


def test_rerun_creates_a_new_enhancement_and_keeps_the_history(lead_client, awaiting):
    response = lead_client.post(_action_url(awaiting, "rerun"), follow=True)
    new = Enhancement.objects.exclude(pk=awaiting.pk).get()
    assert new.ticket_id == awaiting.ticket_id and new.trigger == Enhancement.Trigger.RERUN
    assert new.status == Enhancement.Status.QUEUED
    assert response.request["PATH_INFO"] == _change_url(new)
    awaiting.refresh_from_db()
    assert awaiting.status == Enhancement.Status.REJECTED and awaiting.error == "Superseded by a re-run."
    # Re-running again while the new one is queued does not pile up work.
    lead_client.post(_action_url(awaiting, "rerun"))
    assert Enhancement.objects.count() == 2
    # The new run goes through the real pipeline.
    assert enhancement_process(enhancement_id=str(new.pk)) == Enhancement.Status.AWAITING_REVIEW


def test_actions_are_post_only(lead_client, awaiting):
    assert lead_client.get(_action_url(awaiting, "approve")).status_code == 403
    awaiting.refresh_from_db()
    assert awaiting.status == Enhancement.Status.AWAITING_REVIEW


def test_bulk_approve_posts_each_selected_once(lead_client, review_tenant, sdp):
    rows = [enhancement_make(review_tenant, sdp_id=str(i)) for i in (501, 502)]
    for row in rows:
        sdp.add_request({"id": row.ticket.sdp_id, "subject": row.ticket.subject})
    posted = enhancement_make(review_tenant, sdp_id="503", status=Enhancement.Status.POSTED)
    data = {"action": "approve_selected", "_selected_action": [str(r.pk) for r in [*rows, posted]]}
    response = lead_client.post(CHANGELIST, data, follow=True)
    assert any("2 done, 1 skipped" in m for m in _messages(response))
    assert len(sdp.notes["501"]) == 1 and len(sdp.notes["502"]) == 1 and "503" not in sdp.notes
    lead_client.post(CHANGELIST, data)
    assert len(sdp.notes["501"]) == 1 and len(sdp.notes["502"]) == 1


def test_bulk_reject_and_rerun(lead_client, review_tenant):
    first = enhancement_make(review_tenant, sdp_id="601")
    failed = enhancement_make(review_tenant, sdp_id="602", status=Enhancement.Status.FAILED)
    lead_client.post(CHANGELIST, {"action": "reject_selected", "_selected_action": [str(first.pk)]})
    lead_client.post(CHANGELIST, {"action": "rerun_selected", "_selected_action": [str(failed.pk)]})
    first.refresh_from_db()
    assert first.status == Enhancement.Status.REJECTED
    assert Enhancement.objects.filter(ticket=failed.ticket, status=Enhancement.Status.QUEUED).count() == 1


def test_reviewer_feedback_with_comment(lead_client, review_tenant):
    enhancement = enhancement_make(review_tenant, status=Enhancement.Status.POSTED)
    url = _action_url(enhancement, "feedback")
    lead_client.post(url, {"feedback_rating": "not_helpful", "feedback_comment": "Wrong asset"})
    lead_client.post(url, {"feedback_rating": "helpful", "feedback_comment": "Spot on after all"})
    feedback = Feedback.objects.get(enhancement=enhancement)
    assert (feedback.rating, feedback.comment, feedback.user.username) == ("helpful", "Spot on after all", "lead")
    assert "Spot on after all" in lead_client.get(_change_url(enhancement)).content.decode()
    assert "Helpful" in lead_client.get(CHANGELIST).content.decode()
    response = lead_client.post(url, {"feedback_rating": "great"}, follow=True)
    assert any("Choose helpful or not helpful" in m for m in _messages(response))


# --- escaping -----------------------------------------------------------------------------------------
def test_script_in_ticket_text_is_inert_in_list_detail_and_note(lead_client, review_tenant, post_webhook, sdp):
    evil = {
        "request": {
            **CREATED["request"],
            "id": "666",
            "subject": "<script>alert('subject')</script><b>bold</b>",
            "description": "<p>Hi</p><script>alert('body')</script><img src=x onerror=\"alert('img')\">",
        }
    }
    sdp.add_request(evil["request"])
    secret = Tenant.objects.get(pk=review_tenant.pk).webhook_secret
    enhancement_id = post_webhook("acme", evil, secret=secret).json()["enhancement_id"]
    # The webhook strips HTML, but text typed as "&lt;script&gt;" in SDP (or imported) arrives as a literal tag.
    Ticket.objects.filter(sdp_id="666").update(
        subject="<script>alert('subject')</script><b>bold</b>",
        description="<p>Hi</p><script>alert('body')</script><img src=x onerror=\"alert('img')\">",
    )
    enhancement_process(enhancement_id=enhancement_id)
    enhancement = Enhancement.objects.get(pk=enhancement_id)
    assert enhancement.status == Enhancement.Status.AWAITING_REVIEW
    pages = {
        "list": lead_client.get(CHANGELIST).content.decode(),
        "detail": lead_client.get(_change_url(enhancement)).content.decode(),
        "tickets": lead_client.get("/admin/tickets/ticket/").content.decode(),
        "ticket": lead_client.get(f"/admin/tickets/ticket/{enhancement.ticket_id}/change/").content.decode(),
    }
    for name, html in pages.items():
        assert "<script>alert(" not in html, name
        assert not re.search(r"<img[^>]*onerror", html), name
    assert "&lt;script&gt;alert" in pages["list"] and "&lt;script&gt;alert" in pages["detail"]
    lead_client.post(_action_url(enhancement, "approve"))
    note = sdp.notes["666"][0]["description"]
    assert not re.search(r"<script|<img", note, re.IGNORECASE)
    assert "&lt;script&gt;alert(&#x27;subject&#x27;)" in note  # shown as text in SDP, never run


# --- dashboard ----------------------------------------------------------------------------------------
def test_index_links_to_dashboard_and_review_queue(lead_client):
    html = lead_client.get("/admin/").content.decode()
    assert reverse("admin:enhancements_dashboard") in html
    assert "?status__exact=awaiting_review" in html


def test_dashboard_figures_for_all_tenants_and_one(lead_client, review_tenant, make_tenant):
    other = make_tenant("globex").tenant
    for i, seconds in enumerate([10, 20, 30, 40]):
        row = enhancement_make(review_tenant, sdp_id=f"9{i}", status=Enhancement.Status.POSTED, created_at=days_ago(2))
        Enhancement.objects.filter(pk=row.pk).update(
            posted_at=row.created_at + (days_ago(0) - days_ago(seconds / 86400)),
            finished_at=row.created_at + (days_ago(0) - days_ago(seconds / 86400)),
        )
    enhancement_make(review_tenant, sdp_id="80", status=Enhancement.Status.FAILED, error="SDP refused our credentials")
    enhancement_make(other, sdp_id="81", status=Enhancement.Status.FAILED, error="SDP refused our credentials")
    enhancement_make(other, sdp_id="82")  # awaiting review
    enhancement_make(other, sdp_id="83", created_at=days_ago(45), status=Enhancement.Status.FAILED, error="old")
    helpful = Enhancement.objects.filter(ticket__sdp_id="90").get()
    Feedback.objects.create(enhancement=helpful, rating="helpful")
    Feedback.objects.create(enhancement=helpful, rating="not_helpful")
    Feedback.objects.create(enhancement=helpful, rating="helpful")

    html = lead_client.get(reverse("admin:enhancements_dashboard")).content.decode()
    assert "<svg" in html and "Enhancements per day by outcome" in html and "<script" not in html.split("<svg")[1]
    assert re.search(r'id="te-total">7<', html)
    assert re.search(r'id="te-p50">20.0 s<', html) and re.search(r'id="te-p95">40.0 s<', html)
    assert re.search(r'id="te-failure-rate">33.3%<', html)  # 2 failed of 6 finished
    assert "SDP refused our credentials" in html and ">old<" not in html
    assert re.search(r'id="te-queue"><a [^>]*>1<', html)
    assert re.search(r'id="te-helpful">67%<', html)
    assert re.search(r'id="te-tokens">1400<', html)
    assert "http://" not in html.split("<svg")[1].split("</svg>")[0].replace("http://www.w3.org/2000/svg", "")

    one = lead_client.get(reverse("admin:enhancements_dashboard") + f"?tenant={other.pk}").content.decode()
    assert re.search(r'id="te-total">2<', one) and re.search(r'id="te-p50">—<', one)


# --- tenants, tickets, assets, articles ---------------------------------------------------------------
@pytest.fixture
def operator_client(client):
    client.force_login(operator())
    return client


def _tenant_form(**overrides):
    data = {
        "slug": "initech",
        "name": "Initech",
        "enabled": "on",
        "sdp_base_url": "",
        "sdp_auth_type": "authtoken",
        "webhook_auth": "hmac",
        "llm_model": "",
        "rate_limit_per_minute": "600",
        "cluster_window_minutes": "30",
        "cluster_threshold": "3",
        "refresh_interval_minutes": "15",
        "vip_requesters": "",
        "new_sdp_api_key": "",
        "new_webhook_secret": "",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def test_new_tenant_shows_the_generated_secret_once_and_never_again(operator_client):
    response = operator_client.post("/admin/tickets/tenant/add/", _tenant_form(new_sdp_api_key="key-123"))
    tenant = Tenant.objects.get(slug="initech")
    html = response.content.decode()
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    assert tenant.webhook_secret.startswith("whsec_") and tenant.webhook_secret in html
    assert "http://127.0.0.1:8000/webhook/servicedesk/initech/" in html
    assert tenant.sdp_api_key == "key-123"
    for url in (f"/admin/tickets/tenant/{tenant.pk}/change/", "/admin/tickets/tenant/"):
        page = operator_client.get(url).content.decode()
        assert tenant.webhook_secret not in page and "key-123" not in page
        assert "set (hidden)" in page
    assert (
        "/webhook/servicedesk/initech/"
        in operator_client.get(f"/admin/tickets/tenant/{tenant.pk}/change/").content.decode()
    )
    history = " ".join(e.get_change_message() for e in LogEntry.objects.all())
    assert tenant.webhook_secret not in history and "key-123" not in history


def test_operator_rotates_and_sets_secrets(operator_client, make_tenant):
    tenant = make_tenant("initech", sdp_api_key="old-key").tenant
    old_secret = tenant.webhook_secret
    url = f"/admin/tickets/tenant/{tenant.pk}/change/"
    # Saving other settings keeps both secrets.
    operator_client.post(url, _tenant_form(name="Initech Ltd", review_required="on"))
    tenant.refresh_from_db()
    assert (tenant.name, tenant.review_required) == ("Initech Ltd", True)
    assert (tenant.webhook_secret, tenant.sdp_api_key) == (old_secret, "old-key")
    response = operator_client.post(url, _tenant_form(rotate_webhook_secret="on", new_sdp_api_key="new-key"))
    tenant.refresh_from_db()
    assert tenant.webhook_secret != old_secret and tenant.webhook_secret in response.content.decode()
    assert tenant.sdp_api_key == "new-key"
    operator_client.post(url, _tenant_form(clear_sdp_api_key="on", new_webhook_secret="typed-secret"))
    tenant.refresh_from_db()
    assert (tenant.sdp_api_key, tenant.webhook_secret) == ("", "typed-secret")


def test_tenant_form_refuses_an_unsafe_sdp_url(operator_client, settings):
    settings.SDP_ALLOW_INSECURE_URLS = False
    response = operator_client.post("/admin/tickets/tenant/add/", _tenant_form(sdp_base_url="http://10.0.0.5"))
    assert response.status_code == 200 and "must use https" in response.content.decode()
    assert not Tenant.objects.filter(slug="initech").exists()


def test_test_connection_reports_success_and_the_exact_failure(operator_client, make_tenant, sdp):
    sdp.add_request(CREATED["request"])
    good = make_tenant("good", sdp_base_url=sdp.url, sdp_api_key=sdp.api_key).tenant
    bad = make_tenant("bad", sdp_base_url=sdp.url, sdp_api_key="wrong-key").tenant
    bare = make_tenant("bare").tenant
    response = operator_client.post(f"/admin/tickets/tenant/{good.pk}/test-connection/", follow=True)
    assert any(m.startswith("good: connected to") and "1 requests visible" in m for m in _messages(response))
    response = operator_client.post(f"/admin/tickets/tenant/{bad.pk}/test-connection/", follow=True)
    assert any("bad: connection failed: SDP refused our credentials (HTTP 401" in m for m in _messages(response))
    response = operator_client.post(
        "/admin/tickets/tenant/",
        {"action": "test_connection_selected", "_selected_action": [str(bare.pk), str(good.pk)]},
        follow=True,
    )
    found = _messages(response)
    assert any("bare: connection failed: The tenant has no SDP URL or API key configured." in m for m in found)
    assert any(m.startswith("good: connected") for m in found)
    assert "Test connection" in operator_client.get(f"/admin/tickets/tenant/{good.pk}/change/").content.decode()


def test_ticket_asset_and_article_admins_search_and_filter(operator_client, make_tenant):
    acme, globex = make_tenant("acme").tenant, make_tenant("globex").tenant
    Ticket.objects.create(tenant=acme, sdp_id="1001", subject="VPN drops hourly", is_resolved=True)
    Ticket.objects.create(tenant=globex, sdp_id="1002", subject="Printer offline")
    Asset.objects.create(tenant=acme, hostname="fw-01", ip="10.0.0.1", role="Firewall")
    Asset.objects.create(tenant=globex, hostname="prn-02", role="Printer")
    KnowledgeArticle.objects.create(tenant=acme, title="VPN troubleshooting", tags="vpn")
    KnowledgeArticle.objects.create(tenant=globex, title="Printer drivers", tags="printer")

    def shows(url: str, *texts: str) -> list[bool]:
        html = operator_client.get(url).content.decode()
        return [t in html for t in texts]

    assert shows("/admin/tickets/ticket/?q=1001", "VPN drops", "Printer offline") == [True, False]
    assert shows("/admin/tickets/ticket/?is_resolved__exact=0", "VPN drops", "Printer offline") == [False, True]
    assert shows(f"/admin/tickets/ticket/?tenant__id__exact={acme.pk}", "VPN drops", "Printer offline") == [True, False]
    assert shows("/admin/tickets/asset/?q=10.0.0.1", "fw-01", "prn-02") == [True, False]
    assert shows(f"/admin/tickets/asset/?tenant__id__exact={globex.pk}", "fw-01", "prn-02") == [False, True]
    assert shows("/admin/tickets/knowledgearticle/?q=printer", "VPN troubleshooting", "Printer drivers") == [
        False,
        True,
    ]


def test_approving_a_dry_run_tenants_note_completes_it_without_posting(lead_client, make_tenant):
    enhancement = enhancement_make(make_tenant("dry", review_required=True).tenant)
    response = lead_client.post(_action_url(enhancement, "approve"), follow=True)
    assert any("no SDP credentials (dry run)" in m for m in _messages(response))
    enhancement.refresh_from_db()
    assert enhancement.status == Enhancement.Status.COMPLETED and enhancement.reviewed_by.username == "lead"


def test_an_approval_in_flight_is_not_doubled_but_a_stale_one_can_be_retaken(lead_client, awaiting, sdp):
    # Another reviewer's approval is posting right now: this one does nothing.
    Enhancement.objects.filter(pk=awaiting.pk).update(reviewed_at=days_ago(1 / 1440))
    response = lead_client.post(_action_url(awaiting, "approve"), follow=True)
    assert any("Nothing done" in m for m in _messages(response)) and not sdp.notes
    # That approval died ten minutes ago without posting: approving again posts, once.
    Enhancement.objects.filter(pk=awaiting.pk).update(reviewed_at=days_ago(10 / 1440))
    lead_client.post(_action_url(awaiting, "approve"))
    awaiting.refresh_from_db()
    assert awaiting.status == Enhancement.Status.POSTED and len(sdp.notes["104321"]) == 1
