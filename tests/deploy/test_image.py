"""The image."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.deploy.common import (
    ROOT,
)


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
