"""Drift between compose.yaml and the kompose-derived base, and between the settings and every file that sets them."""

from __future__ import annotations

import ast
import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.common import (
    APP_SERVICES,
    ROOT,
    compose_command,
    compose_ports,
    containers,
    env_names,
    interpolate,
    load_compose,
    objects_of,
)


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


# --- Settings: what the app reads, .env.example, compose and the Kubernetes base agree --------------
# Modules that read the environment: the app code (settings.py above all) and the gunicorn config.
ENV_READERS = (
    *sorted(
        path
        for package in ("project", "tickets", "clusters", "enhancements")
        for path in (ROOT / package).rglob("*.py")
        if "migrations" not in path.parts
    ),
    ROOT / "deploy" / "gunicorn.conf.py",
)
ENV_EXAMPLE = ROOT / ".env.example"
K8S_BASE = ROOT / "deploy" / "k8s" / "base"
# Read by the app, but no deployment sets it by hand: not in .env.example.
NOT_IN_ENV_EXAMPLE = {"POD_IP": "Kubernetes sets it (downward API) in the production overlay"}
# In .env.example's "Compose only" section: compose.yaml uses them itself (${...}); the containers never see them.
COMPOSE_ONLY = {"POSTGRES_USER", "POSTGRES_DB", "POSTGRES_PASSWORD", "IMAGE", "TAG", "WEB_PORT"}
# In .env.example's "Local runs and tests only" section: not forwarded by compose, not in Kubernetes.
LOCAL_ONLY = {
    "Q_SYNC": "runs tasks in the calling process (tests)",
    "STATIC_MANIFEST": "the image's collectstatic decides",
    "WORKER_HEALTH_STATE_FILE": "the worker's health check reads the image's default path",
    "GUNICORN_BIND": "compose publishes and the probes call port 8000",
}
# What reads a name: django-environ (`env.int("X")`), settings.secret("X"), os.environ, and gunicorn.conf.py's _int.
READERS = ("env", "secret", "os.environ.get", "os.getenv", "_int")
SECRET_HOWTO = "docs/architecture.md, 'Settings', lists the files a secret goes in"


def env_reads(paths: tuple[Path, ...] = ENV_READERS) -> dict[str, str]:
    """Return {environment name: where it is read} for env.<cast>("X"), secret("X"), os.environ / os.getenv."""
    found: dict[str, str] = {}

    def record(node: ast.AST, path: Path) -> None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isupper():
            where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            found.setdefault(node.value, f"{where}:{node.lineno}")

    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and node.args:
                func = ast.unparse(node.func)
                if func in READERS or (func.startswith("env.") and func != "env.read_env"):
                    record(node.args[0], path)
            elif isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
                record(node.slice, path)
    return found


def env_example(text: str | None = None) -> dict[str, str]:
    """Return {name: example value} of .env.example's `NAME=value` lines, commented ones too."""
    text = ENV_EXAMPLE.read_text() if text is None else text
    return {m[1]: m[2].strip() for m in re.finditer(r"^#?\s?([A-Z][A-Z0-9_]+)=(.*)$", text, flags=re.MULTILINE)}


def k8s_base_env() -> tuple[set[str], dict[str, set[str]], set[str]]:
    """Return the base's config.env names, each app container's secretKeyRef names, the Secret template's keys."""
    config = {
        line.partition("=")[0].strip()
        for line in (K8S_BASE / "config.env").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    }
    refs: dict[str, set[str]] = {}
    for path in sorted(K8S_BASE.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") not in ("Deployment", "Job"):
                continue
            spec = doc["spec"]["template"]["spec"]
            for container in spec.get("initContainers", []) + spec.get("containers", []):
                refs[container["name"]] = {
                    item["name"] for item in container.get("env", []) if "secretKeyRef" in item.get("valueFrom", {})
                }
    (template,) = yaml.safe_load_all((K8S_BASE / "secret.template.yaml").read_text())
    return config, refs, set(template["stringData"])


def settings_env_problems(
    reads: dict[str, str],
    example: dict[str, str],
    compose: dict[str, Any],
    k8s: tuple[set[str], dict[str, set[str]], set[str]],
) -> list[str]:
    """Return, one sentence each, every setting missing from a file it must be in, naming the file."""
    config, refs, secret_keys = k8s
    problems = [
        f"{name} (read at {where}) is not in .env.example: add `{name}=<default>` with a comment saying what it does"
        for name, where in sorted(reads.items())
        if name not in example and name not in NOT_IN_ENV_EXAMPLE
    ]
    forwarded = {service: set(compose["services"][service].get("environment") or {}) for service in ("web", "worker")}
    interpolated = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", yaml.safe_dump(compose)))
    for name, value in sorted(example.items()):
        if name in COMPOSE_ONLY:
            if name not in interpolated:
                problems.append(f"{name} is in COMPOSE_ONLY but compose.yaml does not use it: remove it from both")
            continue
        if name in LOCAL_ONLY:
            if any(name in names for names in forwarded.values()) or name in config:
                problems.append(f"{name} is forwarded, so it is not local only: remove it from LOCAL_ONLY")
            continue
        if name not in reads:
            problems.append(f"{name} is in .env.example but nothing reads it: remove it from .env.example")
        for service, names in forwarded.items():
            if name not in names:
                problems.append(
                    f"{name} is not forwarded to {service}: add `{name}: ${{{name}:-{value}}}` to "
                    "x-app-environment in compose.yaml"
                )
        if name in config:
            continue
        missing = [c for c in ("web", "worker", "migrate") if name not in refs.get(c, set())]
        if name in secret_keys and not missing:
            continue
        if name not in secret_keys and not any(name in r for r in refs.values()):
            problems.append(
                f"{name} is not in the Kubernetes base: add `{name}={value}` to deploy/k8s/base/config.env "
                f"(a secret goes in deploy/k8s/base/secret.template.yaml instead: {SECRET_HOWTO})"
            )
            continue
        if name not in secret_keys:
            problems.append(f"{name} is a secretKeyRef but not in deploy/k8s/base/secret.template.yaml: add it there")
        if missing:
            problems.append(f"{name} has no secretKeyRef in the {missing} containers: add one ({SECRET_HOWTO})")
    for service, names in forwarded.items():
        problems += [
            f"compose.yaml forwards {name} to {service} but .env.example does not describe it: add `{name}=` there"
            for name in sorted(names - set(example))
        ]
    problems += [
        f"{name} is in NOT_IN_ENV_EXAMPLE but nothing reads it: remove it from NOT_IN_ENV_EXAMPLE in {__name__}"
        for name in sorted(set(NOT_IN_ENV_EXAMPLE) - set(reads))
    ]
    problems += [
        f"{name} is in LOCAL_ONLY but not in .env.example: add `# {name}=` to its 'Local runs and tests only' section"
        for name in sorted(set(LOCAL_ONLY) - set(example))
    ]
    return problems


def test_every_setting_is_in_env_example_compose_and_kubernetes() -> None:
    """Both ways: what the app reads is in .env.example; what .env.example names reaches compose and Kubernetes."""
    problems = settings_env_problems(env_reads(), env_example(), load_compose(), k8s_base_env())
    assert not problems, "settings drifted (docs/architecture.md, 'Settings'):\n" + "\n".join(problems)


def test_settings_env_check_names_the_file_to_fix(tmp_path: Path) -> None:
    """Each way the check can fail names the file a new setting must be added to."""
    module = tmp_path / "settings.py"
    module.write_text('NEW_ONE = env.int("NEW_ONE", default=3)\nOTHER = os.environ.get("OTHER_ONE", "")\n')
    reads = env_reads((module,))
    assert set(reads) == {"NEW_ONE", "OTHER_ONE"}
    compose, k8s = load_compose(), k8s_base_env()
    example = env_example()
    problems = settings_env_problems({**env_reads(), **reads}, example, compose, k8s)
    assert any("NEW_ONE" in p and "add `NEW_ONE=<default>`" in p and ".env.example" in p for p in problems), problems
    example["NEW_ONE"] = "3"
    problems = settings_env_problems({**env_reads(), **reads}, example, compose, k8s)
    assert any("NEW_ONE: ${NEW_ONE:-3}" in p and "compose.yaml" in p for p in problems), problems
    assert any("NEW_ONE=3" in p and "deploy/k8s/base/config.env" in p for p in problems), problems
    example["UNREAD"] = "1"
    problems = settings_env_problems(env_reads(), example, compose, k8s)
    assert any("UNREAD is in .env.example but nothing reads it" in p for p in problems), problems
