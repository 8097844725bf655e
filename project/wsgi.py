"""WSGI entry point for gunicorn: the webhook route runs through a shorter middleware chain."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from django.core.handlers.wsgi import WSGIHandler
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

_full = get_wsgi_application()

from django.conf import settings  # noqa: E402 - after django.setup(), which get_wsgi_application ran

# SDP's webhook needs no session, user, messages, CSRF check (the view is csrf_exempt) or static files: those
# middlewares cost CPU on every call of the hottest route. The request id, security headers and the URL
# normalisation stay, so the webhook answers exactly as before (docs/benchmarks.md, "Webhook load").
WEBHOOK_PREFIX = "/webhook/"
WEBHOOK_MIDDLEWARE = [
    name
    for name in settings.MIDDLEWARE
    if name
    in (
        "project.middleware.RequestIdMiddleware",
        "django.middleware.security.SecurityMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.clickjacking.XFrameOptionsMiddleware",
    )
]


class _WebhookHandler(WSGIHandler):
    """Django's WSGI handler with the webhook's middleware list."""

    def load_middleware(self, is_async: bool = False) -> None:
        """Build the chain from WEBHOOK_MIDDLEWARE (Django reads the list from settings, once, here)."""
        full = settings.MIDDLEWARE
        settings.MIDDLEWARE = WEBHOOK_MIDDLEWARE
        try:
            super().load_middleware(is_async)
        finally:
            settings.MIDDLEWARE = full


_webhook = _WebhookHandler()


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Serve /webhook/ through the short chain and everything else through the full one."""
    if environ.get("PATH_INFO", "").startswith(WEBHOOK_PREFIX):
        return _webhook(environ, start_response)
    return _full(environ, start_response)
