"""Scale on the queue: /metrics exposes the due queue and its oldest age, and the queue-based HPA reads them."""

from __future__ import annotations

from datetime import timedelta

import pytest
import yaml
from django.utils import timezone

from enhancements.models import Enhancement
from tests.deploy.common import K8S, KUBERNETES_VERSION, kustomize, one
from tests.test_metrics import scrape, value
from tickets.models import Ticket

QUEUE_SCALING = K8S / "overlays" / "production-queue-scaling"
ADAPTER_RULES = K8S / "components" / "queue-scaling" / "prometheus-adapter-rules.yaml"


@pytest.mark.django_db
def test_metrics_count_due_work_apart_from_retries_waiting_out_their_backoff(client, tenant):
    now = timezone.now()

    def row(sdp_id: str, age: float, **fields: object) -> Enhancement:
        ticket = Ticket.objects.create(tenant=tenant.tenant, sdp_id=sdp_id, subject="VPN")
        pk = Enhancement.objects.create(tenant=tenant.tenant, ticket=ticket, **fields).pk
        Enhancement.objects.filter(pk=pk).update(created_at=now - timedelta(seconds=age))
        return Enhancement.objects.get(pk=pk)

    empty = scrape(client)
    assert value(empty, "ticket_enhancer_queue_due") == 0
    assert value(empty, "ticket_enhancer_queue_oldest_due_age_seconds") == 0

    row("1", 30)
    row("2", 90)
    # A retry due again 20 s ago, created long before: it has waited 20 s as due work.
    row("3", 3600, attempts=1, next_attempt_at=now - timedelta(seconds=20))
    # A retry waiting out its backoff (an SDP outage, say): more pods could not do it sooner.
    row("4", 7200, attempts=2, next_attempt_at=now + timedelta(minutes=10))
    row("5", 500, status=Enhancement.Status.RUNNING)

    samples = scrape(client)
    assert value(samples, "ticket_enhancer_queue_depth") == 4
    assert value(samples, "ticket_enhancer_queue_due") == 3
    assert 90 <= value(samples, "ticket_enhancer_queue_oldest_due_age_seconds") < 120
    assert value(samples, "ticket_enhancer_queue_oldest_age_seconds") >= 7200


def test_queue_scaling_overlay_validates_and_keeps_cpu_and_memory_beside_the_queue():
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    objects = kustomize(QUEUE_SCALING)
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    hpa = one(objects, "HorizontalPodAutoscaler", "worker")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"}
    resources = {m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"}
    external = {m["external"]["metric"]["name"]: m["external"]["target"] for m in hpa["spec"]["metrics"]
                if m["type"] == "External"}  # fmt: skip
    assert resources == {"cpu", "memory"}
    assert external == {
        "ticket_enhancer_queue_due": {"type": "AverageValue", "averageValue": "48"},
        "ticket_enhancer_queue_oldest_due_age_seconds": {"type": "Value", "value": "60"},
    }
    # Everything else is production as it is.
    production = {(o["kind"], o["metadata"]["name"]) for o in kustomize(K8S / "overlays" / "production")}
    assert {(o["kind"], o["metadata"]["name"]) for o in objects} == production


def test_adapter_rules_publish_exactly_what_the_hpa_reads_from_what_metrics_exposes():
    rules = yaml.safe_load(ADAPTER_RULES.read_text())["rules"]["external"]
    published = {rule["name"]["as"] for rule in rules}
    hpa = one(kustomize(QUEUE_SCALING), "HorizontalPodAutoscaler", "worker")
    read = {m["external"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "External"}
    assert published == read
    for rule in rules:
        series = rule["seriesQuery"].split("{")[0]
        assert series == rule["name"]["as"]
        # Every web pod reports the same database figures: summing them would multiply the queue.
        assert rule["metricsQuery"].startswith("max(")
