"""Floor settings: the project's settings (database, CONN_MAX_AGE, logging) with one bare view and no middleware."""

from project.settings import *  # noqa: F403

ROOT_URLCONF = "bench.floor.urls"
# Bare: no request id, sessions, CSRF or security middleware; only the view's own work is measured.
MIDDLEWARE: list[str] = []
