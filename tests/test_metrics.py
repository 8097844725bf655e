"""GET /metrics: webhook answers by tenant and outcome, and the pipeline's state read from the database."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from enhancements import services
from enhancements.models import Enhancement
from tests.processes import free_port, start_web, stop, wait_http
from tests.signing import sign_webhook

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent


def scrape(client: Client) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Return {sample name: {sorted labels: value}} from GET /metrics."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse(response.content.decode())


def parse(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Return {sample name: {sorted labels: value}} from Prometheus text."""
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    """Return one sample's value, 0 when absent (a counter that was never incremented)."""
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def test_webhook_answers_are_counted_by_tenant_and_outcome(client, make_tenant, post_webhook):
    acme = make_tenant("acme")
    globex = make_tenant("globex", enabled=False)
    before = scrape(client)
    name = "ticket_enhancer_webhook_responses_total"

    for request_id in ("1", "2", "3"):
        assert post_webhook("acme", {"request": {"id": request_id}}, secret=acme.secret).status_code == 202
    assert post_webhook("acme", {"request": {"id": "1"}}, secret=acme.secret).status_code == 200
    assert post_webhook("acme", {"request": {"id": "4"}}, secret="whsec_" + "QUJDREVGR0hJSktMTU5P").status_code == 401
    assert post_webhook("globex", {"request": {"id": "5"}}, secret=globex.secret).status_code == 403
    for _ in range(2):
        assert post_webhook(f"nobody-{uuid.uuid4().hex[:8]}", {"request": {"id": "6"}}).status_code == 401

    after = scrape(client)
    delta = {
        key: value(after, name, tenant=key[0], outcome=key[1]) - value(before, name, tenant=key[0], outcome=key[1])
        for key in [
            ("acme", "queued"),
            ("acme", "duplicate"),
            ("acme", "invalid_signature"),
            ("globex", "tenant_disabled"),
            ("unknown", "invalid_signature"),
        ]
    }
    assert delta == {
        ("acme", "queued"): 3,
        ("acme", "duplicate"): 1,
        # Only an authenticated call is counted under its tenant: a wrong signature for a real slug and any
        # unknown slug share one label value, so the metrics do not tell which slugs exist, and an attacker
        # cannot create series at will.
        ("acme", "invalid_signature"): 0,
        ("globex", "tenant_disabled"): 1,
        ("unknown", "invalid_signature"): 3,
    }
    assert not any(dict(labels)["tenant"].startswith("nobody") for labels in after[name])


@pytest.mark.parametrize("header", ["HTTP_X_FORWARDED_FOR", "HTTP_X_REAL_IP", "HTTP_FORWARDED"])
def test_metrics_are_not_served_through_the_ingress(client, db, header):
    # The ingress adds these headers to every request it forwards; Prometheus scrapes pods directly.
    response = client.get("/metrics", **{header: "203.0.113.9"})
    assert response.status_code == 404 and b"ticket_enhancer" not in response.content


def test_a_metrics_token_is_required_when_configured(client, db, settings):
    settings.METRICS_TOKEN = "scrape-token-1234"
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 404
    ok = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token-1234", HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert ok.status_code == 200 and b"ticket_enhancer" in ok.content


def test_enhancement_state_is_read_from_the_database(client, make_tenant, post_webhook, openai_fake, sdp):
    acme = make_tenant("acme", sdp_base_url=sdp.url, sdp_api_key=sdp.api_key)
    make_tenant("empty")
    ids = []
    for request_id in ("101", "102", "103"):
        payload = {"request": {"id": request_id, "subject": f"VPN drops {request_id}", "description": "It drops."}}
        sdp.add_request({"id": request_id, "subject": payload["request"]["subject"]})
        response = post_webhook("acme", payload, secret=acme.secret)
        ids.append(response.json()["enhancement_id"])
    assert services.enhancement_process(enhancement_id=ids[0]) == Enhancement.Status.POSTED
    # Pretend the oldest queued row arrived ten minutes ago (created_at is set by auto_now_add).
    Enhancement.objects.filter(pk=ids[2]).update(created_at=timezone.now() - timedelta(minutes=10))

    samples = scrape(client)
    assert value(samples, "ticket_enhancer_metrics_database_up") == 1
    assert value(samples, "ticket_enhancer_enhancements", tenant="acme", status="posted") == 1
    assert value(samples, "ticket_enhancer_enhancements", tenant="acme", status="queued") == 2
    assert value(samples, "ticket_enhancer_enhancements", tenant="acme", status="failed") == 0
    assert ("tenant", "empty") not in {label for labels in samples["ticket_enhancer_enhancements"] for label in labels}
    assert value(samples, "ticket_enhancer_queue_depth") == 2
    assert 590 <= value(samples, "ticket_enhancer_queue_oldest_age_seconds") <= 660

    posted = Enhancement.objects.get(pk=ids[0])
    assert posted.prompt_tokens and posted.completion_tokens
    assert value(samples, "ticket_enhancer_llm_tokens_total", tenant="acme", kind="prompt") == posted.prompt_tokens
    assert (
        value(samples, "ticket_enhancer_llm_tokens_total", tenant="acme", kind="completion") == posted.completion_tokens
    )
    assert value(samples, "ticket_enhancer_time_to_note_seconds_count") == 1
    assert value(samples, "ticket_enhancer_time_to_note_seconds_bucket", le="+Inf") == 1
    took = (posted.posted_at - posted.created_at).total_seconds()
    assert value(samples, "ticket_enhancer_time_to_note_seconds_sum") == pytest.approx(took, abs=0.01)


def test_time_to_note_buckets_are_cumulative_and_windowed(client, make_tenant, post_webhook, settings):
    settings.METRICS_WINDOW_SECONDS = 3600
    acme = make_tenant("acme")
    now = timezone.now()
    # (seconds from webhook to note, minutes ago the note was posted)
    cases = [(0.5, 1), (3, 2), (45, 5), (700, 30), (7200, 50), (4, 120)]
    for index, (took, posted_ago) in enumerate(cases):
        enhancement_id = post_webhook("acme", {"request": {"id": str(index)}}, secret=acme.secret).json()[
            "enhancement_id"
        ]
        posted_at = now - timedelta(minutes=posted_ago)
        Enhancement.objects.filter(pk=enhancement_id).update(
            status=Enhancement.Status.POSTED, created_at=posted_at - timedelta(seconds=took), posted_at=posted_at
        )

    samples = scrape(client)
    bucket = "ticket_enhancer_time_to_note_seconds_bucket"
    # The note posted two hours ago is outside the one-hour window.
    assert value(samples, "ticket_enhancer_time_to_note_seconds_count") == 5
    assert value(samples, bucket, le="1.0") == 1
    assert value(samples, bucket, le="5.0") == 2
    assert value(samples, bucket, le="60.0") == 3
    assert value(samples, bucket, le="600.0") == 3
    assert value(samples, bucket, le="1800.0") == 4
    assert value(samples, bucket, le="3600.0") == 4
    assert value(samples, bucket, le="21600.0") == 5
    assert value(samples, bucket, le="+Inf") == 5
    assert value(samples, "ticket_enhancer_time_to_note_seconds_sum") == pytest.approx(0.5 + 3 + 45 + 700 + 7200)


def test_empty_database_scrapes_cleanly(client, db):
    samples = scrape(client)
    assert value(samples, "ticket_enhancer_queue_depth") == 0
    assert value(samples, "ticket_enhancer_queue_oldest_age_seconds") == 0
    assert value(samples, "ticket_enhancer_time_to_note_seconds_count") == 0


# --- several gunicorn workers ---------------------------------------------------------------------
def _manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.fixture
def gunicorn_two_workers(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Run gunicorn with two workers, a multiprocess metrics directory and its own SQLite database."""
    multiproc = tmp_path / "prometheus"
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")},
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        "DEBUG": "0",
        "LOG_LEVEL": "WARNING",
        "SDP_ALLOW_INSECURE_URLS": "1",
    }
    _manage(env, "migrate", "--no-input")
    created = _manage(env, "create_tenant", "acme", "--name", "Acme")
    secret = next(word for word in created.split() if word.startswith("whsec_"))
    port = free_port()
    env.update({"WEB_CONCURRENCY": "2", "GUNICORN_THREADS": "2", "GUNICORN_BIND": f"127.0.0.1:{port}"})
    log = tmp_path / "web.log"
    process = start_web(env, log)  # the image's command: deploy/gunicorn.conf.py reads the env above
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/health", proc=process, timeout=30, ok_only=True, log=log)
        yield {"base": base, "secret": secret, "multiproc": multiproc}
    finally:
        stop(process, timeout=15)


@pytest.mark.processes
def test_metrics_add_up_across_gunicorn_workers(gunicorn_two_workers):
    server = gunicorn_two_workers
    url = f"{server['base']}/webhook/servicedesk/acme/"
    bad = {"Content-Type": "application/json", "webhook-id": "x", "webhook-timestamp": "1", "webhook-signature": "v1,x"}

    def one(index: int) -> int:
        body = json.dumps({"request": {"id": f"mp-{index}", "subject": "s"}}).encode()
        return _post(
            url,
            body,
            {**sign_webhook(server["secret"], body), "Content-Type": "application/json"} if index % 4 else bad,
        )

    sent = 0
    statuses: list[int] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        # Keep sending in parallel until both workers have answered some (each writes its own file).
        for _ in range(10):
            statuses += pool.map(one, range(sent, sent + 40))
            sent += 40
            if len({p.name.rsplit("_", 1)[-1] for p in server["multiproc"].glob("counter_*.db")}) >= 2:
                break
    pids = {p.name.rsplit("_", 1)[-1] for p in server["multiproc"].glob("counter_*.db")}
    assert len(pids) >= 2, "both workers should have counted webhook answers"
    queued, rejected = statuses.count(202), statuses.count(401)
    assert queued + rejected == sent

    for _ in range(6):
        # Whichever worker serves the scrape, the totals are the sum over both workers.
        with urllib.request.urlopen(f"{server['base']}/metrics", timeout=10) as response:
            samples = parse(response.read().decode())
        name = "ticket_enhancer_webhook_responses_total"
        assert value(samples, name, tenant="acme", outcome="queued") == queued
        assert value(samples, name, tenant="unknown", outcome="invalid_signature") == rejected
        assert value(samples, "ticket_enhancer_queue_depth") == queued
        assert value(samples, "ticket_enhancer_enhancements", tenant="acme", status="queued") == queued
