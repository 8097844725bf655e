"""Production settings pass `check --deploy`; local defaults stay safe."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PRODUCTION = {
    "DEBUG": "0",
    "SECRET_KEY": secrets.token_urlsafe(64),
    "ALLOWED_HOSTS": "te.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://te.example.com",
    "SECURE_SSL_REDIRECT": "1",
}
# Variables that would change the answer if they leaked in from the developer's shell.
_SCRUBBED = (
    "DEBUG",
    "SECRET_KEY",
    "SECRET_KEY_FILE",
    "ALLOWED_HOSTS",
    "CSRF_TRUSTED_ORIGINS",
    "SECURE_SSL_REDIRECT",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_PRELOAD",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
)


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run manage.py with the given environment on top of a scrubbed copy of ours."""
    base = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_with_production_settings():
    done = manage("check", "--deploy", "--fail-level", "WARNING", **PRODUCTION)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues" in done.stdout


def show(*names: str, **env: str) -> dict[str, str]:
    """Return the settings' reprs as the given environment configures them."""
    code = "from django.conf import settings; " + "; ".join(f"print('=', repr(settings.{n}))" for n in names)
    done = manage("shell", "--no-imports", "-c", code, **env)
    assert done.returncode == 0, done.stderr
    values = [line[2:] for line in done.stdout.splitlines() if line.startswith("= ")]
    return dict(zip(names, values, strict=True))


def test_production_settings_are_the_documented_ones():
    assert show(
        "SECURE_HSTS_SECONDS",
        "SECURE_HSTS_INCLUDE_SUBDOMAINS",
        "SESSION_COOKIE_SECURE",
        "CSRF_COOKIE_SECURE",
        "SECURE_PROXY_SSL_HEADER",
        "SECURE_SSL_REDIRECT",
        "ALLOWED_HOSTS",
        "CSRF_TRUSTED_ORIGINS",
        "SECURE_REDIRECT_EXEMPT",
        **PRODUCTION,
    ) == {
        "SECURE_HSTS_SECONDS": "31536000",
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": "True",
        "SESSION_COOKIE_SECURE": "True",
        "CSRF_COOKIE_SECURE": "True",
        "SECURE_PROXY_SSL_HEADER": "('HTTP_X_FORWARDED_PROTO', 'https')",
        "SECURE_SSL_REDIRECT": "True",
        "ALLOWED_HOSTS": "['te.example.com']",
        "CSRF_TRUSTED_ORIGINS": "['https://te.example.com']",
        # Probes and scrapes come over plain HTTP inside the cluster and must not be redirected.
        "SECURE_REDIRECT_EXEMPT": "['^health$', '^api/v1/ready$', '^metrics$']",
    }


def test_local_defaults_are_safe():
    assert show("DEBUG", "ALLOWED_HOSTS", "SDP_ALLOW_INSECURE_URLS", "SESSION_COOKIE_SECURE") == {
        "DEBUG": "False",
        "ALLOWED_HOSTS": "['localhost', '127.0.0.1', '[::1]']",
        "SDP_ALLOW_INSECURE_URLS": "False",
        "SESSION_COOKIE_SECURE": "True",
    }


def test_check_deploy_names_what_production_must_set():
    # Without the production values the check fails loudly instead of passing quietly.
    done = manage("check", "--deploy", "--fail-level", "WARNING", DEBUG="1")
    assert done.returncode != 0
    assert "security.W018" in done.stderr  # DEBUG on
    assert "security.W008" in done.stderr  # no SSL redirect


def test_malformed_values_fail_loudly():
    done = manage("check", LOG_FORMAT="xml")
    assert done.returncode != 0 and "LOG_FORMAT must be json or console" in done.stderr
