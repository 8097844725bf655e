"""Fixtures of the deploy tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.common import (
    OVERLAYS,
    ROOT,
    kustomize,
)


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict[str, Any]]]:
    return {name: kustomize(path) for name, path in OVERLAYS.items()}


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
