"""The layout holds: one home per concern, checked by reading the code (see docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP_PACKAGES = ("project", "tickets", "enhancements")
SDP_PACKAGE = ROOT / "tickets" / "sdp"


def _app_modules() -> list[Path]:
    return sorted(
        path for package in APP_PACKAGES for path in (ROOT / package).rglob("*.py") if "migrations" not in path.parts
    )


def _constructs(tree: ast.AST, name: str) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if called == name:
                lines.append(node.lineno)
    return lines


def test_only_the_sdp_package_constructs_the_sdp_client():
    """Every SDP client comes from the one factory, which renews SDP Cloud (Zoho) tokens."""
    offenders = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in _app_modules()
        if SDP_PACKAGE not in path.parents
        for line in _constructs(ast.parse(path.read_text()), "ServiceDeskClient")
    ]
    assert not offenders, f"construct the SDP client with tickets.sdp.auth.servicedesk_client(), not at {offenders}"
