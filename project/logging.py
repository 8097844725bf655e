"""Log context carried across a request and into the worker: request id and enhancement id."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from contextlib import contextmanager

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
enhancement_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("enhancement_id", default="-")


class ContextFilter(logging.Filter):
    """Add the current request id and enhancement id to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Return True after annotating the record."""
        if not hasattr(record, "request_id"):
            request_id = request_id_var.get()
            if request_id == "-":
                # django.request logs 4xx/5xx after the middleware has unbound the id; the record
                # carries the request itself.
                request_id = getattr(getattr(record, "request", None), "request_id", "-")
            record.request_id = request_id
        if not hasattr(record, "enhancement_id"):
            record.enhancement_id = enhancement_id_var.get()
        return True


@contextmanager
def log_context(*, request_id: str | None = None, enhancement_id: str | None = None) -> Iterator[None]:
    """Bind the given ids to log records for the duration of the block."""
    tokens = []
    if request_id:
        tokens.append((request_id_var, request_id_var.set(request_id)))
    if enhancement_id:
        tokens.append((enhancement_id_var, enhancement_id_var.set(enhancement_id)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)
