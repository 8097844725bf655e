"""The production overlay, to the letter of the deployment design."""

from __future__ import annotations

from typing import Any

import yaml

from tests.deploy.common import (
    APP_SERVICES,
    OVERLAYS,
    SECRET_NAMES,
    objects_of,
    one,
    probe,
)


def test_production_web(built: dict[str, list[dict[str, Any]]]) -> None:
    objects = built["production"]
    web = one(objects, "Deployment", "web")
    assert web["spec"]["replicas"] == 2
    spec = web["spec"]["template"]["spec"]
    container = next(c for c in spec["containers"] if c["name"] == "web")
    live, ready, startup = (probe(container, k) for k in ("livenessProbe", "readinessProbe", "startupProbe"))
    assert (live["httpGet"]["path"], live["initialDelaySeconds"], live["periodSeconds"]) == ("/health", 30, 10)
    assert (ready["httpGet"]["path"], ready["initialDelaySeconds"], ready["periodSeconds"]) == ("/api/v1/ready", 5, 5)
    assert (startup["httpGet"]["path"], startup["failureThreshold"], startup["periodSeconds"]) == ("/health", 30, 10)
    allowed_hosts = one(objects, "ConfigMap", spec["containers"][0]["envFrom"][0]["configMapRef"]["name"])["data"][
        "ALLOWED_HOSTS"
    ].split(",")
    for p in (live, ready, startup):
        hosts = [h["value"] for h in p["httpGet"].get("httpHeaders", []) if h["name"].lower() == "host"]
        assert hosts and hosts[0] in allowed_hosts, "probes must send a Host that Django accepts"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    (init,) = spec["initContainers"]
    assert init["args"][-1].startswith("python manage.py wait_for_db --timeout 120 && python manage.py migrate")
    service = one(objects, "Service", "web")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert [p["port"] for p in service["spec"]["ports"]] == [8000]


def test_production_worker(built: dict[str, list[dict[str, Any]]]) -> None:
    objects = built["production"]
    worker = one(objects, "Deployment", "worker")
    assert worker["spec"]["replicas"] == 3
    spec = worker["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["args"] == ["python", "manage.py", "qcluster"]
    live = probe(container, "livenessProbe")
    assert live["exec"]["command"][:3] == ["python", "manage.py", "worker_health"]
    config = one(objects, "ConfigMap", container["envFrom"][0]["configMapRef"]["name"])["data"]
    assert spec["terminationGracePeriodSeconds"] > int(config["Q_TIMEOUT"])
    hpa = one(objects, "HorizontalPodAutoscaler", "worker")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 10)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"}
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"}


def test_production_pods_are_locked_down(built: dict[str, list[dict[str, Any]]]) -> None:
    objects = built["production"]
    for name in ("web", "worker"):
        spec = one(objects, "Deployment", name)["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] >= 10000
        assert spec["automountServiceAccountToken"] is False
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in spec.get("initContainers", []) + spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]]
            assert "emptyDir" in volumes[mounts["/tmp/prometheus"]]
            refs = {
                e["name"]: e["valueFrom"]["secretKeyRef"]
                for e in container.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})
            }
            assert set(refs) == SECRET_NAMES, container["name"]
            assert {r["name"] for r in refs.values()} == {"ticket-enhancer-secrets"}


def test_production_ingress(built: dict[str, list[dict[str, Any]]]) -> None:
    objects = built["production"]
    ingress = one(objects, "Ingress", "web")
    notes = ingress["metadata"]["annotations"]
    assert notes["cert-manager.io/cluster-issuer"] == "letsencrypt-prod"
    assert notes["nginx.ingress.kubernetes.io/ssl-redirect"] == "true"
    assert notes["nginx.ingress.kubernetes.io/force-ssl-redirect"] == "true"
    config = next(iter(objects_of(objects, "ConfigMap").values()))["data"]
    size = notes["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert size.endswith("k") and int(size[:-1]) * 1024 == int(config["WEBHOOK_MAX_BYTES"])
    (tls,) = ingress["spec"]["tls"]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] in tls["hosts"] and tls["secretName"]
    paths = {p["path"]: p["backend"]["service"] for p in rule["http"]["paths"]}
    assert set(paths) == {"/webhook", "/health", "/api", "/admin", "/static"}
    assert all(b == {"name": "web", "port": {"number": 8000}} for b in paths.values())


def test_production_namespace_pdbs_and_network_policies(built: dict[str, list[dict[str, Any]]]) -> None:
    objects = built["production"]
    assert one(objects, "Namespace", "ticket-enhancer")
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "ticket-enhancer", obj["metadata"]["name"]
    pdbs = objects_of(objects, "PodDisruptionBudget")
    assert {p["spec"]["selector"]["matchLabels"]["io.kompose.service"] for p in pdbs.values()} == {"web", "worker"}
    policies = objects_of(objects, "NetworkPolicy")
    deny = policies["default-deny-all"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    web = policies["web-from-ingress"]["spec"]
    assert web["podSelector"]["matchLabels"] == {"io.kompose.service": "web"}
    (rule,) = web["ingress"]
    assert [p["port"] for p in rule["ports"]] == [8000]
    assert all("namespaceSelector" in peer for peer in rule["from"])
    egress = policies["app-egress"]["spec"]["egress"]
    ports = {p["port"] for rule in egress for p in rule.get("ports", [])}
    assert {53, 5432, 443} <= ports and (6379 in ports or 6380 in ports)
    # No in-cluster database or Redis, no migrate Job: managed services and the init container.
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert not {("Deployment", "postgres"), ("Deployment", "redis"), ("Job", "migrate")} & kinds


def test_base_network_policies_admit_only_the_app_to_the_datastores(built: dict[str, list[dict[str, Any]]]) -> None:
    policies = objects_of(built["base"], "NetworkPolicy")
    for name, port in (("postgres-from-app", 5432), ("redis-from-app", 6379)):
        (rule,) = policies[name]["spec"]["ingress"]
        (peer,) = rule["from"]
        assert set(peer["podSelector"]["matchExpressions"][0]["values"]) == set(APP_SERVICES)
        assert [p["port"] for p in rule["ports"]] == [port]


def test_production_secret_template() -> None:
    (secret,) = yaml.safe_load_all((OVERLAYS["production"] / "secret.template.yaml").read_text())
    data = secret["stringData"]
    assert set(data) == SECRET_NAMES
    assert "sslmode=require" in data["DATABASE_URL"]
    assert data["REDIS_URL"].startswith("rediss://")
    kustomization = yaml.safe_load((OVERLAYS["production"] / "kustomization.yaml").read_text())
    assert "secret.template.yaml" not in kustomization["resources"], "a Secret template must not be applied"
