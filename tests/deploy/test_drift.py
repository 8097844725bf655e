"""Drift between compose.yaml and the kompose-derived base."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.deploy.common import (
    APP_SERVICES,
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
