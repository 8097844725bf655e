"""Outage clusters: bursts through the real pipeline and SDP fake, storms side by side, tenants apart, quality."""

from __future__ import annotations

import json
from datetime import timedelta
from itertools import combinations
from pathlib import Path

import pytest
from django.utils import timezone

from clusters import tasks as cluster_tasks
from clusters.models import ClusterCandidate, OutageCluster
from clusters.services import cluster_check, cluster_dismiss, cluster_link_requests, cluster_split, followup_sweep
from enhancements import tasks
from enhancements.models import Enhancement
from tests.fakes.sdp import sdp_time
from tickets.models import Ticket

pytestmark = pytest.mark.django_db

STORMS = json.loads((Path(__file__).parent / "data" / "storms.json").read_text())
START = timezone.now().replace(microsecond=0) - timedelta(hours=12)


def _request(sdp_id: str, subject: str, description: str, minute: float) -> dict:
    created = int((START + timedelta(minutes=minute)).timestamp() * 1000)
    return {
        "id": sdp_id,
        "subject": subject,
        "description": f"<p>{description}</p>",
        "status": {"name": "Open"},
        "requester": {"name": "Ana Silva", "email_id": f"user{sdp_id}@acme.example"},
        "created_time": sdp_time(created),
    }


def _deliver(post_webhook, result, sdp, request: dict) -> Enhancement:
    if sdp is not None:
        sdp.add_request(request)
    response = post_webhook(result.tenant.slug, {"event": "request_created", "request": request}, secret=result.secret)
    assert response.status_code == 202, response.content
    return Enhancement.objects.get(pk=response.json()["enhancement_id"])


def _process(enhancement: Enhancement) -> Enhancement:
    tasks.process_enhancement(str(enhancement.pk))
    enhancement.refresh_from_db()
    return enhancement


def _drain_followups() -> list[str]:
    """Run every pending follow-up the way the worker would (the broker may hold them; the row is the truth)."""
    done = []
    for pk in ClusterCandidate.objects.filter(followup_status="pending").values_list("pk", flat=True):
        done.append(cluster_tasks.post_followup(pk))
    return done


VPN = [
    ("VPN not connecting", "Since 9:40 the VPN client says gateway vpn-gw01 unreachable."),
    ("Cannot connect to VPN from home", "GlobalProtect VPN fails to connect, tried rebooting."),
    ("VPN connection failed", "The VPN gateway is not responding, connection times out."),
    ("VPN keeps dropping", "My VPN disconnected and will not reconnect, error 809."),
]
PRINTER = [
    ("Printer on 3rd floor not printing", "Jobs sent to PRN-3F-01 sit in the print queue with status error."),
    ("Cannot print to PRN-3F-01", "The third floor printer is offline, print queue stuck."),
    ("Print jobs stuck in queue", "Nothing prints on the 3rd floor printer, queue keeps growing."),
]


@pytest.fixture
def sdp_tenant(make_tenant, sdp):
    return make_tenant("acme", sdp_base_url=sdp.url, sdp_api_key=sdp.api_key)


def test_a_burst_forms_one_cluster_and_the_first_tickets_get_exactly_one_follow_up(sdp_tenant, sdp, post_webhook):
    # Four VPN tickets in six minutes (a realistic storm rate), each processed as it arrives.
    enhancements = []
    for i, (subject, body) in enumerate(VPN):
        enhancements.append(_process(_deliver(post_webhook, sdp_tenant, sdp, _request(f"90{i}", subject, body, i * 2))))
    assert [e.status for e in enhancements] == ["posted"] * 4

    first, second, third, fourth = (sdp.notes[f"90{i}"][0]["description"] for i in range(4))
    assert "Probable outage" not in first and "Probable outage" not in second
    # The third ticket crosses the threshold: its own note says so first, naming the other two.
    assert third.index("Probable outage") < third.index("Ticket Enhancer summary")
    assert "2 other tickets in the last 4 minutes look like the same problem: " in third
    assert "#900" in third and "#901" in third and "Probably one outage." in third
    assert f'<a href="{sdp.url}/WorkOrder.do?woMode=viewWO&amp;woID=900" target="_blank">#900</a>' in third
    assert "3 other tickets" in fourth and "#902" in fourth

    # The first two got no follow-up yet (it is queued); posting them twice still posts each once.
    assert len(sdp.notes["900"]) == 1
    assert _drain_followups() == ["posted", "posted"]
    assert _drain_followups() == []
    for sdp_id in ("900", "901"):
        notes = sdp.notes[sdp_id]
        assert len(notes) == 2, notes
        assert "probable outage" in notes[1]["description"].lower()
        assert "ticket-enhancer:followup-" in notes[1]["description"]
        assert 'target="_blank">#902</a>' in notes[1]["description"]
    assert len(sdp.notes["902"]) == 1 and len(sdp.notes["903"]) == 1  # their own notes said it

    cluster = OutageCluster.objects.get()
    assert cluster.size == 4 and cluster.status == "open"
    assert "vpn" in cluster.common_words
    assert cluster.first_at < cluster.last_at


def test_a_follow_up_with_an_unclear_outcome_is_not_posted_twice(sdp_tenant, sdp, post_webhook):
    for i, (subject, body) in enumerate(VPN[:3]):
        _process(_deliver(post_webhook, sdp_tenant, sdp, _request(f"91{i}", subject, body, i)))
    # The first follow-up reaches SDP but the answer is lost (a timeout after SDP stored the note).
    sdp.fail_next(status="timeout", delay=3.0, path_contains="/910/notes", method="POST", process=True)
    from django.conf import settings

    settings.SDP_TIMEOUT = 0.5
    results = _drain_followups()
    assert "pending" in results
    assert len(sdp.notes["910"]) == 2  # stored by SDP despite the timeout
    # The retry (after the stuck interval) finds the marker and does not post again.
    ClusterCandidate.objects.filter(followup_status="pending").update(
        followup_started_at=timezone.now() - timedelta(minutes=5)
    )
    assert followup_sweep() >= 1
    assert _drain_followups() == ["posted"]
    assert len(sdp.notes["910"]) == 2


def test_two_unrelated_storms_at_once_in_one_tenant_form_two_clusters(sdp_tenant, sdp, post_webhook):
    order = [("v", 0), ("p", 0), ("v", 1), ("p", 1), ("v", 2), ("p", 2), ("v", 3)]
    for n, (kind, i) in enumerate(order):
        subject, body = (VPN if kind == "v" else PRINTER)[i]
        _process(_deliver(post_webhook, sdp_tenant, sdp, _request(f"{kind}{i}", subject, body, n * 1.5)))
    clusters = {c.pk: {m.ticket.sdp_id for m in c.members.all()} for c in OutageCluster.objects.all()}
    assert sorted(clusters.values(), key=len) == [{"p0", "p1", "p2"}, {"v0", "v1", "v2", "v3"}]
    assert "#v" not in sdp.notes["p2"][0]["description"]
    assert "#p" not in sdp.notes["v3"][0]["description"]


def test_the_same_storm_in_two_tenants_is_never_one_cluster(make_tenant, sdp, post_webhook):
    acme = make_tenant("acme", sdp_base_url=sdp.url, sdp_api_key=sdp.api_key)
    globex = make_tenant("globex", sdp_base_url=sdp.url, sdp_api_key=sdp.api_key)
    # Two tickets in each tenant at the same minutes: neither tenant alone reaches the threshold of 3.
    for n, (subject, body) in enumerate(VPN[:2]):
        _process(_deliver(post_webhook, acme, sdp, _request(f"a{n}", subject, body, n)))
        _process(_deliver(post_webhook, globex, sdp, _request(f"g{n}", subject, body, n)))
    assert not OutageCluster.objects.exists()
    _process(_deliver(post_webhook, acme, sdp, _request("a2", *VPN[2], 2)))
    _process(_deliver(post_webhook, globex, sdp, _request("g2", *VPN[2], 2)))
    clusters = list(OutageCluster.objects.all())
    assert len(clusters) == 2
    for cluster in clusters:
        assert {m.ticket.tenant_id for m in cluster.members.all()} == {cluster.tenant_id}
        assert cluster.size == 3
    assert "#g" not in sdp.notes["a2"][0]["description"]


def test_out_of_order_arrival_still_clusters_and_says_within(tenant, post_webhook):
    # Created at minutes 10, 0, 5; delivered and processed in that order (SDP retried the earliest late).
    for sdp_id, minute, (subject, body) in (("o1", 10, VPN[0]), ("o2", 0, VPN[1]), ("o3", 5, VPN[2])):
        enhancement = _process(_deliver(post_webhook, tenant, None, _request(sdp_id, subject, body, minute)))
    assert enhancement.context["cluster"]["latest"] is False
    assert "within 10 minutes" in enhancement.note_html
    cluster = OutageCluster.objects.get()
    assert cluster.size == 3
    assert cluster.last_at - cluster.first_at == timedelta(minutes=10)
    # Dry run: no follow-ups queued, marked as such.
    assert set(ClusterCandidate.objects.exclude(ticket__sdp_id="o3").values_list("followup_status", flat=True)) == {
        "skipped"
    }


def test_tickets_outside_the_window_do_not_cluster(tenant, post_webhook, make_tenant):
    for n, (subject, body) in enumerate(VPN[:3]):
        _process(_deliver(post_webhook, tenant, None, _request(f"w{n}", subject, body, n * 40)))
    assert not OutageCluster.objects.exists()


def test_per_tenant_threshold_and_window(make_tenant, post_webhook):
    strict = make_tenant("strict", cluster_threshold=4, cluster_window_minutes=5)
    for n, (subject, body) in enumerate(VPN[:3]):
        _process(_deliver(post_webhook, strict, None, _request(f"s{n}", subject, body, n)))
    assert not OutageCluster.objects.exists()
    _process(_deliver(post_webhook, strict, None, _request("s3", *VPN[3], 3)))
    assert OutageCluster.objects.get().size == 4


def test_dismiss_split_and_rerun(tenant, post_webhook):
    made = [_process(_deliver(post_webhook, tenant, None, _request(f"d{n}", s, b, n))) for n, (s, b) in enumerate(VPN)]
    cluster = OutageCluster.objects.get()
    assert cluster_split(cluster_id=str(cluster.pk), ticket_id=made[3].ticket_id)
    cluster.refresh_from_db()
    assert cluster.size == 3
    # A split ticket never joins again, even when re-checked.
    assert cluster_check(ticket=Ticket.objects.get(pk=made[3].ticket_id)) is None
    assert cluster_dismiss(cluster_id=str(cluster.pk), user=None)
    assert not cluster_dismiss(cluster_id=str(cluster.pk), user=None)
    # A dismissed cluster takes no new tickets, and its members do not form a new one with them.
    late = _process(_deliver(post_webhook, tenant, None, _request("d9", *VPN[0], 5)))
    assert "cluster" not in late.context
    assert OutageCluster.objects.count() == 1


def test_a_lead_links_the_clusters_requests_to_the_first(sdp_tenant, sdp, post_webhook):
    for n, (subject, body) in enumerate(VPN[:3]):
        _process(_deliver(post_webhook, sdp_tenant, sdp, _request(f"l{n}", subject, body, n)))
    cluster = OutageCluster.objects.get()
    result = cluster_link_requests(cluster_id=str(cluster.pk))
    assert result.ok, result.message
    assert [link["linked_request"]["id"] for link in sdp.links["l0"]] == ["l1", "l2"]
    cluster.refresh_from_db()
    assert cluster.linked_at is not None
    # Linking again is harmless: SDP keeps one link per pair.
    assert cluster_link_requests(cluster_id=str(cluster.pk)).ok
    assert len(sdp.links["l0"]) == 2


# --- quality on the labelled storm set ----------------------------------------------------------------------------
def _evaluate(make_tenant) -> dict:
    tenants = {slug: make_tenant(slug).tenant for slug in {t["tenant"] for t in STORMS["tickets"]}}
    predicted: dict[str, str | None] = {}
    for item in STORMS["tickets"]:
        ticket = Ticket.objects.create(
            tenant=tenants[item["tenant"]],
            sdp_id=item["id"],
            subject=item["subject"],
            description=item["description"],
            sdp_created_at=START + timedelta(minutes=item["minute"]),
        )
        cluster_check(ticket=ticket)
    for row in ClusterCandidate.objects.select_related("ticket", "tenant"):
        predicted[f"{row.tenant.slug}/{row.ticket.sdp_id}"] = str(row.cluster_id) if row.cluster_id else None
    labels = {f"{t['tenant']}/{t['id']}": t["storm"] for t in STORMS["tickets"]}
    tp = fp = fn = 0
    for a, b in combinations(labels, 2):
        same_label = labels[a] is not None and labels[a] == labels[b]
        same_pred = predicted[a] is not None and predicted[a] == predicted[b]
        tp += same_label and same_pred
        fp += same_pred and not same_label
        fn += same_label and not same_pred
    return {"precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / (tp + fn) if tp + fn else 0.0}


@pytest.mark.parametrize(("provider", "min_recall"), [("local", 0.85), ("off", 0.7)])
def test_clustering_quality_on_the_labelled_storm_set(make_tenant, settings, provider, min_recall):
    # With the shipped embeddings model (meaning and words) and without it (words, hosts and IPs only).
    settings.EMBEDDINGS_PROVIDER = provider
    figures = _evaluate(make_tenant)
    print(f"{provider}: pairwise precision {figures['precision']:.3f} recall {figures['recall']:.3f}")
    assert figures["precision"] >= 0.9, figures
    assert figures["recall"] >= min_recall, figures
    # Never across tenants.
    for cluster in OutageCluster.objects.all():
        assert {m.tenant_id for m in cluster.members.all()} == {cluster.tenant_id}


# --- the admin's "Open clusters" view -------------------------------------------------------------------------------
def test_a_support_lead_sees_open_clusters_and_dismisses_splits_and_links(sdp_tenant, sdp, post_webhook, client):
    from tests.review_helpers import operator, support_lead

    for n, (subject, body) in enumerate(VPN):
        _process(_deliver(post_webhook, sdp_tenant, sdp, _request(f"k{n}", subject, body, n * 3)))
    cluster = OutageCluster.objects.get()
    client.force_login(support_lead())

    listing = client.get("/admin/clusters/outagecluster/")
    assert listing.status_code == 302 and listing["Location"].endswith("?status__exact=open")
    page = client.get("/admin/clusters/outagecluster/?status__exact=open").content.decode()
    assert "Open clusters" in page and "#k0" in page and "#k3" in page and "<svg" in page and "vpn" in page
    dashboard = client.get("/admin/enhancements/enhancement/dashboard/").content.decode()
    assert 'id="te-clusters"' in dashboard and ">1</a>" in dashboard.split('id="te-clusters"')[1][:200]

    detail = client.get(f"/admin/clusters/outagecluster/{cluster.pk}/change/").content.decode()
    assert "Split out" in detail and "Dismiss" in detail and "Link the requests" in detail
    assert client.get(f"/admin/clusters/outagecluster/{cluster.pk}/dismiss/").status_code == 403  # POST only

    member = cluster.members.order_by("at").last()
    client.post(f"/admin/clusters/outagecluster/{cluster.pk}/split/?ticket={member.ticket_id}")
    cluster.refresh_from_db()
    assert cluster.size == 3
    client.post(f"/admin/clusters/outagecluster/{cluster.pk}/link/")
    assert [link["linked_request"]["id"] for link in sdp.links["k0"]] == ["k1", "k2"]
    client.post(f"/admin/clusters/outagecluster/{cluster.pk}/dismiss/")
    cluster.refresh_from_db()
    assert cluster.status == "dismissed" and cluster.dismissed_by is not None

    # An operator (no cluster permissions) can neither see nor act.
    client.force_login(operator())
    assert client.get("/admin/clusters/outagecluster/?status__exact=open").status_code == 403
    assert client.post(f"/admin/clusters/outagecluster/{cluster.pk}/dismiss/").status_code == 403


# --- a burst through real processes: concurrent workers, one cluster, each follow-up exactly once -----------------
@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_a_burst_on_real_workers_forms_one_cluster_with_exactly_one_follow_up_each(tmp_path, sdp):
    import time as _time

    from tests.processes import running_stack, wait_for
    from tests.signing import sign_webhook
    from tickets.services import tenant_create_or_update

    result = tenant_create_or_update(slug="burst", name="Burst", sdp_base_url=sdp.url, sdp_api_key=sdp.api_key)
    texts = VPN + [(s, b) for s, b in VPN[:2]]  # six tickets, two workers, all within a minute
    with running_stack(tmp_path, Q_WORKERS="2") as stack:
        for n, (subject, body) in enumerate(texts):
            request = _request(f"r{n}", subject, body, 600 + n * 0.2)
            sdp.add_request(request)
            raw = json.dumps({"event": "request_created", "request": request}).encode()
            headers = sign_webhook(result.secret, raw)
            status, _, _ = stack.request(
                "POST", "/webhook/servicedesk/burst/", raw, {"Content-Type": "application/json", **headers}
            )
            assert status == 202
            _time.sleep(0.2)
        wait_for(
            lambda: (
                all(sdp.notes.get(f"r{n}") for n in range(6))
                and not ClusterCandidate.objects.filter(followup_status="pending").exists()
            ),
            timeout=60,
            what="a note on each of the six requests and no follow-up pending",
        )
        _time.sleep(1.0)  # room for a duplicate to show itself
    cluster = OutageCluster.objects.get()
    assert cluster.size == 6
    followups = {n: sum("followup-" in note["description"] for note in sdp.notes[f"r{n}"]) for n in range(6)}
    said = {n: "Probable outage" in sdp.notes[f"r{n}"][0]["description"] for n in range(6)}
    for n in range(6):
        # Each ticket learns about the outage exactly once: in its own note, or in one follow-up.
        assert said[n] + followups[n] == 1, (n, said, followups)
    assert sum(followups.values()) >= 2  # the tickets posted before the cluster formed
