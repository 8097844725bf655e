"""Management commands an operator types: create_tenant, setup_demo, send_webhook and retrieval_report."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import time
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from enhancements.models import Enhancement
from tests.processes import BASE_DIR, process_env, running_stack, wait_for
from tickets.models import Asset, KnowledgeArticle, Tenant, Ticket


def _create(*args: str) -> str:
    out = StringIO()
    call_command("create_tenant", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_create_tenant_prints_url_and_secret_once():
    out = _create("acme", "--name", "Acme Corp")
    assert "http://127.0.0.1:8000/webhook/servicedesk/acme/" in out
    secret = re.search(r"shown once, store it now\): (whsec_\S+)", out).group(1)
    tenant = Tenant.objects.get(slug="acme")
    assert tenant.webhook_secret == secret and tenant.webhook_auth == "hmac"
    # The decoded key is printable ASCII so an SDP Deluge function can use it as a string key.
    key = base64.b64decode(secret.removeprefix("whsec_"))
    assert key.decode("ascii").isprintable() and len(key) >= 24
    assert f"Signing key for an SDP Deluge function: {key.decode()}" in out

    again = _create("acme", "--review-required")
    assert "unchanged" in again and secret not in again
    tenant.refresh_from_db()
    assert tenant.review_required and tenant.name == "Acme Corp" and tenant.webhook_secret == secret

    rotated = _create("acme", "--rotate-secret")
    tenant.refresh_from_db()
    assert tenant.webhook_secret != secret and tenant.webhook_secret in rotated


@pytest.mark.django_db
def test_create_tenant_token_mode_and_given_secret():
    out = _create("tok", "--webhook-auth", "token", "--webhook-secret", "s3cret-token-value")
    assert "X-ServiceDesk-Token" in out
    assert Tenant.objects.get(slug="tok").webhook_secret == "s3cret-token-value"


@pytest.mark.django_db
def test_create_tenant_secrets_are_encrypted_at_rest(settings):
    settings.SDP_ALLOW_INSECURE_URLS = False
    _create("acme", "--sdp-url", "https://sdp.acme.example", "--sdp-api-key", "key-123")
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT sdp_api_key, webhook_secret FROM tickets_tenant WHERE slug = 'acme'")
        stored_key, stored_secret = cursor.fetchone()
    assert "key-123" not in stored_key and not stored_secret.startswith("whsec_")
    assert Tenant.objects.get(slug="acme").sdp_api_key == "key-123"


@pytest.mark.django_db
def test_create_tenant_rejects_an_insecure_sdp_url(settings):
    settings.SDP_ALLOW_INSECURE_URLS = False
    with pytest.raises(CommandError, match="https"):
        _create("acme", "--sdp-url", "http://sdp.acme.example", "--sdp-api-key", "k")
    assert not Tenant.objects.exists()


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_make_run_demo_flow(tmp_path):
    """What `make run` promises: a demo tenant with history, and a sample webhook that completes."""
    out = StringIO()
    call_command("setup_demo", stdout=out)
    tenant = Tenant.objects.get(slug="demo")
    assert Ticket.objects.filter(tenant=tenant, is_resolved=True).count() >= 30
    assert Asset.objects.filter(tenant=tenant).exists() and KnowledgeArticle.objects.filter(tenant=tenant).exists()
    text = out.getvalue()
    assert "login: admin / " in text and tenant.webhook_secret in text and "send_webhook demo" in text
    call_command("setup_demo", stdout=StringIO())  # idempotent
    assert Tenant.objects.filter(slug="demo").count() == 1

    with running_stack(tmp_path) as stack:
        sent = subprocess.run(
            [sys.executable, "manage.py", "send_webhook", "demo", "--url", stack.base_url],
            cwd=BASE_DIR,
            env=process_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "-> 202" in sent.stdout, sent.stdout + sent.stderr
        enhancement = wait_for(
            lambda: Enhancement.objects.filter(tenant=tenant, status__in=("completed", "failed")).first(),
            timeout=60,
            what="the demo enhancement to finish",
        )
        assert enhancement.status == "completed", enhancement.error
        assert enhancement.context["similar_tickets"], "the demo history should give similar tickets"
        assert "lt-0457" in enhancement.note_html.lower()


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_runlocal_serves_and_ctrl_c_stops_web_and_worker(tmp_path):
    """`make run`'s last step: web and worker together; Ctrl-C (SIGINT to the terminal's group) stops both."""
    import os
    import signal

    from tests.processes import free_port, start, stop, wait_http

    port = free_port()
    log = tmp_path / "runlocal.log"
    # A group of its own (start), like a terminal's foreground job.
    command = [sys.executable, "manage.py", "runlocal", "--bind", f"127.0.0.1:{port}", "--web-workers", "1"]
    proc = start(command, env=process_env(), log=log)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc=proc, timeout=60, ok_only=True, log=log)
        time.sleep(3)  # let the worker finish starting
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 2, children  # gunicorn and qcluster
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=40) == 0
        assert "web and worker stopped." in log.read_text()
        for pid in children:
            with pytest.raises(ProcessLookupError):
                os.kill(int(pid), 0)
    finally:
        stop(proc, signal.SIGKILL, timeout=5)


def test_make_run_binds_loopback_unless_asked():
    dry = subprocess.run(["make", "-n", "run"], cwd=BASE_DIR, capture_output=True, text=True, check=True).stdout
    assert "runlocal --bind 127.0.0.1:8000" in dry and "0.0.0.0" not in dry
    asked = subprocess.run(
        ["make", "-n", "run", "BIND=0.0.0.0:8000"], cwd=BASE_DIR, capture_output=True, text=True, check=True
    ).stdout
    assert "runlocal --bind 0.0.0.0:8000" in asked
    from enhancements.management.commands.runlocal import Command

    parser = Command().create_parser("manage.py", "runlocal")
    assert parser.parse_args([]).bind == "127.0.0.1:8000"


def test_the_sqlite_file_and_its_directory_are_owner_only(tmp_path):
    import stat

    for existing in (False, True):
        var = tmp_path / f"run-{existing}" / "var"
        db = var / "db.sqlite3"
        if existing:
            var.mkdir(parents=True)
            db.write_bytes(b"")
            db.chmod(0o644)
        env = process_env(DATABASE_URL=f"sqlite:///{db}")
        # A fresh file is created by migrate (which also writes the -wal/-shm files); settings fix an old one.
        command = ["check", "--database", "default"] if existing else ["migrate"]
        subprocess.run([sys.executable, "manage.py", *command, "-v0"], cwd=BASE_DIR, env=env, check=True)
        assert stat.S_IMODE(db.stat().st_mode) == 0o600, oct(db.stat().st_mode)
        if not existing:
            assert stat.S_IMODE(var.stat().st_mode) == 0o700, oct(var.stat().st_mode)
        for sidecar in var.glob("db.sqlite3-*"):
            assert stat.S_IMODE(sidecar.stat().st_mode) & 0o077 == 0, sidecar


@pytest.mark.django_db
def test_retrieval_report_on_a_database_not_migrated_says_to_migrate():
    from django.db.migrations.recorder import MigrationRecorder

    # The newest tickets migration is recorded as not applied (the test's transaction rolls it back).
    newest = MigrationRecorder.Migration.objects.filter(app="tickets").order_by("-name").first()
    MigrationRecorder.Migration.objects.filter(pk=newest.pk).delete()
    with pytest.raises(CommandError, match=rf"not migrated .*tickets\.{newest.name}\): run `python manage.py migrate`"):
        call_command("retrieval_report", stdout=StringIO())


def test_retrieval_report_on_an_empty_database_exits_non_zero_without_a_traceback(tmp_path):
    empty = tmp_path / "empty.sqlite3"  # nothing migrated, no table at all
    result = subprocess.run(
        [sys.executable, "manage.py", "retrieval_report"],
        cwd=BASE_DIR,
        env=process_env(DATABASE_URL=f"sqlite:///{empty}"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "this database is not migrated" in result.stderr and "run `python manage.py migrate` first" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
