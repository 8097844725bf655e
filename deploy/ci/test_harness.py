"""Tests of the container check itself: broken inputs must make it fail (run by deploy/ci/check.sh, step 8).

They need the check's Docker engine and images (DOCKER_HOST, APP_IMAGE, CI_RUN from check.sh), so they are
not part of `make test`. Each fixture is the rendered production overlay (or deploy/Dockerfile) with one
deliberate mistake; the harness must exit 1 and say what broke.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
IMAGE = os.environ.get("APP_IMAGE", "ticket-enhancer:ci")

pytestmark = pytest.mark.skipif("DOCKER_HOST" not in os.environ, reason="needs deploy/ci/check.sh's engine")


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    text = subprocess.run(
        ["kubectl", "kustomize", "deploy/k8s/overlays/production"], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def web_only(docs: list[dict[str, Any]], *, keep_init: bool = False) -> list[dict[str, Any]]:
    """Return the ConfigMap and the web Deployment (without its init container unless asked): a small fixture."""
    kept = [copy.deepcopy(d) for d in docs if d["kind"] == "ConfigMap"]
    web = copy.deepcopy(next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "web"))
    if not keep_init:
        web["spec"]["template"]["spec"].pop("initContainers", None)
    return [*kept, web]


def pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]


def run_harness(tmp_path: Path, docs: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    manifests = tmp_path / "rendered.yaml"
    manifests.write_text(yaml.safe_dump_all(docs))
    return subprocess.run(
        [sys.executable, str(HERE / "k8s_harness.py"), "--image", IMAGE, "--manifests", str(manifests),
         "--values", str(HERE / "k8s-values.env"), "--max-replicas", "1", "--max-wait", "25", "--no-outage"],
        capture_output=True, text=True, timeout=240, cwd=REPO,
    )  # fmt: skip


def wrong_probe_path(docs: list[dict[str, Any]]) -> None:
    pod(docs)["containers"][0]["startupProbe"]["httpGet"]["path"] = "/healthz"


def missing_database_url(docs: list[dict[str, Any]]) -> None:
    for container in pod(docs)["initContainers"] + pod(docs)["containers"]:
        container["env"] = [e for e in container["env"] if e["name"] != "DATABASE_URL"]


def missing_secret_key(docs: list[dict[str, Any]]) -> None:
    pod(docs)["containers"][0]["env"].append(
        {"name": "SDP_TIMEOUT", "valueFrom": {"secretKeyRef": {"name": "ticket-enhancer-secrets", "key": "NOPE"}}}
    )


def write_to_read_only_path(docs: list[dict[str, Any]]) -> None:
    # No emptyDir at /tmp: gunicorn's Prometheus directory (/tmp/prometheus) lands on the read-only root.
    pod(docs)["containers"][0]["volumeMounts"] = []


CASES: dict[str, tuple[Callable[[list[dict[str, Any]]], None], bool, str]] = {
    "wrong probe path": (wrong_probe_path, False, "startupProbe did not pass"),
    "missing env var (DATABASE_URL)": (missing_database_url, True, "init container migrate exited"),
    "env var from a Secret key that does not exist": (missing_secret_key, False, "CreateContainerConfigError"),
    "write to a read-only path": (write_to_read_only_path, False, "web-0/web is exited"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_broken_manifest_fails_the_harness(case: str, rendered: list[dict[str, Any]], tmp_path: Path) -> None:
    breaker, keep_init, reason = CASES[case]
    docs = web_only(rendered, keep_init=keep_init)
    breaker(docs)
    result = run_harness(tmp_path, docs)
    assert result.returncode == 1, result.stdout + result.stderr
    assert reason in result.stderr, result.stderr


def test_manifests_without_deployments_fail(rendered: list[dict[str, Any]], tmp_path: Path) -> None:
    result = run_harness(tmp_path, [d for d in rendered if d["kind"] != "Deployment"])
    assert result.returncode == 1 and "no Deployment" in result.stderr


def build_variant(tmp_path: Path, edit: Callable[[str], str], tag: str) -> None:
    dockerfile = tmp_path / "Dockerfile"
    original = (REPO / "deploy" / "Dockerfile").read_text()
    changed = edit(original)
    assert changed != original, "the fixture edit did not change the Dockerfile"
    dockerfile.write_text(changed)
    subprocess.run(
        ["docker", "build", "-q", "--network", "host", "--build-arg", "PYTHON_IMAGE=local/python:3.12-ci",
         "--build-arg", "BUILDER_IMAGE=local/python:3.12-ci-builder", "-f", str(dockerfile), "-t", tag, "."],
        check=True, capture_output=True, timeout=300, cwd=REPO, env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )  # fmt: skip


DOCKERFILE_CASES: dict[str, tuple[Callable[[str], str], str]] = {
    "runs as root": (lambda text: text.replace("USER 10001:10001\n", ""), "image USER is"),
    "no static files": (
        lambda text: text.replace(
            "RUN STATIC_MANIFEST=1 python manage.py collectstatic --noinput --verbosity 1 \\\n &&", "RUN"
        ),
        "static files",
    ),
}


@pytest.mark.parametrize("case", list(DOCKERFILE_CASES))
def test_broken_dockerfile_fails_the_image_checks(case: str, tmp_path: Path) -> None:
    edit, reason = DOCKERFILE_CASES[case]
    tag = "ticket-enhancer:broken-ci"
    build_variant(tmp_path, edit, tag)
    try:
        result = subprocess.run(
            ["bash", str(HERE / "image_checks.sh"), tag], capture_output=True, text=True, timeout=300, cwd=REPO
        )
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, check=False)
    assert result.returncode != 0, result.stdout
    assert reason in result.stderr, result.stdout + result.stderr


def test_a_dockerfile_that_does_not_build_fails(tmp_path: Path) -> None:
    with pytest.raises(subprocess.CalledProcessError):
        build_variant(
            tmp_path, lambda text: text.replace("COPY requirements/base.txt", "COPY requirements/missing.txt"), "x:ci"
        )
