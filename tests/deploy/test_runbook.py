"""The runbook's commands exist and work with these files."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.deploy.common import (
    K8S,
    ROOT,
    containers,
    kustomize,
    manage,
    objects_of,
    one,
)

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
