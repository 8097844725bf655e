"""compose.yaml."""

from __future__ import annotations

import re

from tests.deploy.common import (
    ROOT,
    load_compose,
)


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
    assert used - documented == set(), f"not in .env.example: {sorted(used - documented)}"
    settings_text = (
        (ROOT / "project" / "settings.py").read_text() if (ROOT / "project" / "settings.py").exists() else ""
    )
    for name in ("SECRET_KEY", "DATABASE_URL", "REDIS_URL", "FIELD_ENCRYPTION_KEY", "WEBHOOK_MAX_BYTES", "Q_TIMEOUT"):
        assert name in documented
        if settings_text:
            assert name in settings_text, f"{name} is documented but settings.py does not read it"
