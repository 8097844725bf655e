"""Imports: tickets from ServiceDesk Plus (the fake, over HTTP), assets from CSV, articles from files or CSV."""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from tests.fakes.sdp import sdp_time
from tickets.imports import article_import, asset_import_csv, ticket_import_from_sdp
from tickets.models import Asset, KnowledgeArticle, Ticket, TicketImport
from tickets.sdp.client import ServiceDeskError
from tickets.services import ticket_upsert

pytestmark = pytest.mark.django_db

IMPORT_FIXTURES = Path(__file__).parent / "fixtures" / "import"
DAY_MS = 86_400_000


def _now_ms() -> int:
    return int(time.time() * 1000)


def _seed(sdp, count: int, *, first_id: int = 1000, status: str = "Closed", days_ago: float = 10) -> list[str]:
    """Add `count` requests to the fake, resolved one minute apart; return their ids."""
    base = _now_ms() - int(days_ago * DAY_MS)
    ids = []
    for n in range(count):
        ids.append(
            sdp.add_request(
                {
                    "id": str(first_id + n),
                    "subject": f"Printer queue {n} stuck",
                    "description": f"<p>Jobs stay in the queue on PRN-{n:03d}.</p>",
                    "status": {"name": status},
                    "priority": {"name": "Low"},
                    "requester": {"name": "Dana", "email_id": "dana@example.com"},
                    "created_time": sdp_time(base + n * 60_000 - 3_600_000),
                    "resolved_time": sdp_time(base + n * 60_000),
                    "resolution": {"content": f"<p>Restarted the spooler on PRN-{n:03d}.</p>"},
                }
            )
        )
    return ids


@pytest.fixture
def sdp_tenant(make_tenant, sdp):
    return make_tenant("acme", sdp_base_url=sdp.url, sdp_api_key=sdp.api_key).tenant


def _import(tenant, **kwargs):
    now = time.time()
    return ticket_import_from_sdp(
        tenant=tenant,
        since=datetime.fromtimestamp(now - 30 * 86400, tz=UTC),
        until=datetime.fromtimestamp(now, tz=UTC),
        backoff_base=0.01,
        **kwargs,
    )


def _list_calls(sdp) -> list[dict]:
    return [r.input_data["list_info"] for r in sdp.requests_log if r.path.endswith("/requests") and r.input_data]


# --- tickets ------------------------------------------------------------------------------------------------------
def test_import_pages_through_resolved_requests_and_fetches_each(sdp, sdp_tenant):
    ids = _seed(sdp, 205)
    _seed(sdp, 3, first_id=5000, status="Open")  # not resolved: not listed
    _seed(sdp, 2, first_id=6000, days_ago=60)  # resolved before the window
    seen = []
    report = _import(sdp_tenant, progress=lambda done, total: seen.append((done, total)))

    assert (report.created, report.updated, report.unchanged, report.skipped) == (205, 0, 0, 0)
    stored = Ticket.objects.filter(tenant=sdp_tenant)
    assert sorted(stored.values_list("sdp_id", flat=True)) == sorted(ids)
    ticket = stored.get(sdp_id="1007")
    # The list leaves description and resolution out; the import fetched each request for them.
    assert ticket.description == "Jobs stay in the queue on PRN-007."
    assert ticket.resolution == "Restarted the spooler on PRN-007."
    assert ticket.is_resolved and ticket.source == Ticket.Source.IMPORT and ticket.resolved_at is not None
    calls = _list_calls(sdp)
    assert [c["start_index"] for c in calls] == [1, 101, 201]
    assert all(c["row_count"] == 100 and c["sort_field"] == "resolved_time" for c in calls)
    assert calls[0]["search_criteria"][0] == {
        "field": "status.name",
        "condition": "is",
        "values": ["Resolved", "Closed"],
    }
    assert calls[0]["search_criteria"][1]["condition"] == "between"
    assert seen == [(100, 205), (200, 205), (205, 205)]
    assert TicketImport.objects.get(tenant=sdp_tenant).finished_at is not None


def test_import_again_duplicates_nothing_and_counts_updates(sdp, sdp_tenant):
    _seed(sdp, 105)
    _import(sdp_tenant)
    sdp.requests["1003"]["resolution"] = {"content": "<p>Replaced the fuser.</p>"}
    report = _import(sdp_tenant)
    assert (report.created, report.updated, report.unchanged) == (0, 1, 104)
    assert Ticket.objects.filter(tenant=sdp_tenant).count() == 105
    assert Ticket.objects.get(sdp_id="1003").resolution == "Replaced the fuser."


def test_import_backs_off_on_throttling_and_server_errors(sdp, sdp_tenant):
    _seed(sdp, 120)
    # More failures in a row than the client's own retries: the import waits and tries again.
    sdp.fail_next(4, "throttle_4015", path_contains="/requests", method="GET", retry_after=0)
    sdp.fail_next(2, 429, path_contains="/requests/1110", retry_after=0)
    sdp.fail_next(4, 503, path_contains="/requests/1042")
    report = _import(sdp_tenant)
    assert report.created == 120 and report.skipped == 0
    assert sdp.pending_failures() == 0


def test_interrupted_import_continues_where_it_stopped(sdp, sdp_tenant):
    _seed(sdp, 160)
    # Request 1150 (second page) fails on every attempt (3 calls by the client, 6 times by the import): the
    # import gives up after storing the first page.
    sdp.fail_next(18, 500, path_contains="/requests/1150")
    with pytest.raises(ServiceDeskError):
        _import(sdp_tenant)
    assert sdp.pending_failures() == 0
    assert Ticket.objects.filter(tenant=sdp_tenant).count() == 100
    run = TicketImport.objects.get(tenant=sdp_tenant)
    assert run.finished_at is None and run.resolved_through is not None

    sdp.requests_log.clear()
    report = _import(sdp_tenant)
    assert report.resumed_from == run.resolved_through
    assert Ticket.objects.filter(tenant=sdp_tenant).count() == 160
    # It did not start over: the first list call starts at the resume point, not at the window's start.
    first = _list_calls(sdp)[0]["search_criteria"][1]["values"][0]
    assert int(first) == int(run.resolved_through.timestamp() * 1000)
    assert report.created == 60 and report.updated == 0
    assert TicketImport.objects.get(pk=run.pk).finished_at is not None


def test_deleted_or_reopened_requests_are_skipped_with_reasons(sdp, sdp_tenant):
    _seed(sdp, 5)
    sdp.fail_next(1, 404, path_contains="/requests/1002")
    report = _import(sdp_tenant)
    assert report.created == 4
    assert report.problems[0][0] == "request 1002" and report.problems[0][1].startswith("not readable")


def test_import_tickets_command_prints_a_summary(sdp, sdp_tenant, capsys):
    _seed(sdp, 12)
    ticket_upsert(tenant=sdp_tenant, sdp_id="1000", fields={"subject": "old", "status": "Closed"}, source="webhook")
    out = io.StringIO()
    call_command("import_tickets", "acme", "--since", "30d", stdout=out, stderr=io.StringIO())
    text = out.getvalue()
    assert "11 new, 1 updated, 0 unchanged, 0 skipped" in text
    with pytest.raises(CommandError, match="No tenant"):
        call_command("import_tickets", "nope", stdout=io.StringIO())


def test_import_tickets_command_needs_credentials(make_tenant):
    make_tenant("bare")
    with pytest.raises(CommandError, match="no SDP URL"):
        call_command("import_tickets", "bare", stdout=io.StringIO())


# --- assets -------------------------------------------------------------------------------------------------------
def test_assets_valid_file_imports_every_row_once(tenant):
    report = asset_import_csv(tenant=tenant.tenant, path=IMPORT_FIXTURES / "assets_valid.csv")
    assert (report.created, report.skipped) == (8, 0)
    fs = Asset.objects.get(tenant=tenant.tenant, ip="10.40.1.12")
    assert fs.hostname == "glx-fs01.globex.example.com" and "\\\\GLX-FS01\\Shared" in fs.notes
    assert Asset.objects.get(hostname="www.globex.example.com").ip == "2001:db8:40::25"
    again = asset_import_csv(tenant=tenant.tenant, path=IMPORT_FIXTURES / "assets_valid.csv")
    assert (again.created, again.updated, again.unchanged) == (0, 0, 8)
    assert Asset.objects.count() == 8


def test_assets_bad_rows_are_reported_with_line_numbers(tenant):
    out = io.StringIO()
    call_command("import_assets", "acme", str(IMPORT_FIXTURES / "assets_bad.csv"), stdout=out)
    text = out.getvalue()
    assert "5 new, 0 updated, 0 unchanged, 5 skipped" in text
    assert "line 3: invalid IP" in text and "line 10: invalid IP" in text
    assert "line 4: no hostname or IP" in text
    assert "line 6: duplicate" in text
    assert "line 7: role too long" in text
    assert Asset.objects.get(hostname="glx-fw02.globex.example.com").ip == "10.40.0.2"
    assert Asset.objects.filter(tenant=tenant.tenant).count() == 5


def test_asset_ip_already_used_by_another_host_is_reported(tenant, tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("ip,hostname\n10.0.0.1,alpha\n10.0.0.1,beta\n,bad_name!\n")
    report = asset_import_csv(tenant=tenant.tenant, path=path)
    assert report.created == 1
    assert report.problems == [
        ("line 3", "IP in use: 10.0.0.1 already belongs to alpha"),
        ("line 4", "invalid hostname: invalid hostname 'bad_name!' (letters, digits and '-' in dot-separated labels)"),
    ]


# --- articles -----------------------------------------------------------------------------------------------------
def test_articles_from_csv(tenant):
    out = io.StringIO()
    call_command("import_articles", "acme", str(IMPORT_FIXTURES / "articles.csv"), stdout=out)
    assert "4 new, 0 updated, 0 unchanged, 1 skipped" in out.getvalue()
    assert "line 7: no title" in out.getvalue()
    spooler = KnowledgeArticle.objects.get(title="Resetting a stuck print spooler")
    assert "net start spooler" in spooler.body and spooler.tags == "printers, print spooler, print queue"
    assert '"The network path was not found"' in KnowledgeArticle.objects.get(title__startswith="Mapped drive").body
    again = article_import(tenant=tenant.tenant, path=IMPORT_FIXTURES / "articles.csv")
    assert (again.created, again.unchanged) == (0, 4)


def test_articles_from_a_folder_of_markdown_and_html(tenant):
    folder = IMPORT_FIXTURES / "articles"
    report = article_import(tenant=tenant.tenant, path=folder)
    files = [p for p in folder.iterdir() if p.suffix in (".md", ".html")]
    assert report.created == len(files) and report.skipped == 0
    html = KnowledgeArticle.objects.filter(url__isnull=False).exclude(url="")
    assert html.exists()
    for article in KnowledgeArticle.objects.all():
        assert article.title and article.body and "<" not in article.title


def test_article_files_are_validated(tenant, tmp_path):
    (tmp_path / "good.md").write_text("# VPN drops\nTags: vpn\nURL: https://kb.example.com/vpn\n\nLower the MTU.\n")
    (tmp_path / "notitle.md").write_text("Just a body without a heading.\n")
    (tmp_path / "badurl.md").write_text("# Bad link\nURL: javascript:alert(1)\n\nBody.\n")
    (tmp_path / "page.html").write_text(
        "<html><head><title>Printer offline</title><style>p{}</style></head>"
        "<body><h1>Printer offline</h1><p>Restart the spooler.</p><script>x()</script></body></html>"
    )
    (tmp_path / "notes.txt").write_text("ignored")
    report = article_import(tenant=tenant.tenant, path=tmp_path)
    assert report.created == 2
    assert dict(report.problems) == {
        "badurl.md": "invalid URL: 'javascript:alert(1)'",
        "notitle.md": "no title: an article needs one",
    }
    page = KnowledgeArticle.objects.get(title="Printer offline")
    assert "Restart the spooler." in page.body and "x()" not in page.body and "p{}" not in page.body
    vpn = KnowledgeArticle.objects.get(title="VPN drops")
    assert (vpn.url, vpn.tags, vpn.body) == ("https://kb.example.com/vpn", "vpn", "Lower the MTU.")


@pytest.mark.parametrize(
    ("since", "window_start"),
    [("2024-01-01", "resolved 2024-01-01 00:00"), ("2024-01-01T06:30:00", "resolved 2024-01-01 06:30"), ("2w", None)],
)
def test_import_tickets_since_accepts_a_date_a_date_time_and_a_duration(sdp, sdp_tenant, since, window_start):
    _seed(sdp, 3)
    out = io.StringIO()
    call_command("import_tickets", "acme", "--since", since, "--no-progress", stdout=out, stderr=io.StringIO())
    text = out.getvalue()
    assert "3 new, 0 updated, 0 unchanged, 0 skipped" in text
    run = TicketImport.objects.get(tenant=sdp_tenant)
    assert run.since.tzinfo is not None
    if window_start:
        assert window_start in text
    else:
        assert abs((datetime.now(tz=UTC) - run.since).total_seconds() - 14 * 86400) < 60


def test_import_tickets_rejects_a_since_it_cannot_read(sdp_tenant):
    with pytest.raises(CommandError, match="neither a duration"):
        call_command("import_tickets", "acme", "--since", "last tuesday", stdout=io.StringIO())


def test_a_zoho_tenant_imports_history_after_its_access_token_expired(make_tenant):
    from datetime import timedelta

    from django.utils import timezone

    from tests.fakes.sdp import FakeServiceDesk
    from tests.fakes.zoho import FakeZohoAccounts
    from tickets.models import Tenant

    with FakeServiceDesk(auth="zoho_oauth", api_key="1000.expired", portal="itdesk") as sdp:
        ids = _seed(sdp, 3)
        with FakeZohoAccounts(sdp) as accounts:
            tenant = make_tenant(
                "cloudy",
                sdp_base_url=sdp.url,
                sdp_auth_type=Tenant.AuthType.ZOHO_OAUTH,
                sdp_api_key="1000.expired",
                zoho_accounts_url=accounts.url,
                zoho_client_id=accounts.client_id,
                zoho_client_secret=accounts.client_secret,
                zoho_refresh_token=accounts.refresh_token,
            ).tenant
            Tenant.objects.filter(pk=tenant.pk).update(sdp_token_expires_at=timezone.now() - timedelta(minutes=5))
            sdp.api_key = "1000.only-zoho-knows-the-next-one"  # SDP Cloud no longer accepts the stored token
            out = io.StringIO()
            call_command(
                "import_tickets", "cloudy", "--since", "30d", "--no-progress", stdout=out, stderr=io.StringIO()
            )
    assert "3 new, 0 updated, 0 unchanged, 0 skipped" in out.getvalue()
    assert sorted(Ticket.objects.filter(tenant=tenant).values_list("sdp_id", flat=True)) == sorted(ids)
    assert accounts.issued == ["1000.access1"]
    tenant.refresh_from_db()
    assert tenant.sdp_api_key == "1000.access1"
    sent = {r.headers.get("authorization") for r in sdp.requests_log}
    assert sent == {"Zoho-oauthtoken 1000.access1"}
