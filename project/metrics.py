"""Prometheus plumbing: the metric name prefix, multiprocess mode under gunicorn, and the /metrics view.

Under gunicorn each worker is a separate process. Counters incremented in a worker are shared through
prometheus_client's multiprocess mode when `PROMETHEUS_MULTIPROC_DIR` is set (the directory must exist and be
emptied when the server starts; deploy/gunicorn.conf.py does both and calls `mark_process_dead` on child exit).
The apps define their metrics (enhancements/metrics.py); urls.py hands the view the collectors that read the
database at scrape time, so this module imports no app.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable
from pathlib import Path

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

PREFIX = "ticket_enhancer"

_MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
if _MULTIPROC_DIR:
    # gunicorn's on_starting hook makes (and empties) it; a process started otherwise must not fail on it.
    Path(_MULTIPROC_DIR).mkdir(parents=True, exist_ok=True)


class _Delegate(Collector):
    """Expose another registry's metrics through a per-scrape registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        """Yield the delegated registry's metrics."""
        return self._registry.collect()


def scrape_registry(*, collectors: Iterable[Collector] = ()) -> CollectorRegistry:
    """Return a registry with the in-process (or all-process) counters plus the given per-scrape collectors."""
    registry = CollectorRegistry(auto_describe=False)
    if _MULTIPROC_DIR:
        from prometheus_client import multiprocess

        # Sums the counters every worker wrote into the shared directory.
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_Delegate(REGISTRY))
    for collector in collectors:
        registry.register(collector)
    return registry


# Headers a reverse proxy (the ingress) adds to every request it forwards; Prometheus scrapes pods directly.
_PROXY_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_X_REAL_IP", "HTTP_FORWARDED")


def _may_scrape(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    if token:
        supplied = request.META.get("HTTP_AUTHORIZATION", "").removeprefix("Bearer ").strip()
        return hmac.compare_digest(supplied.encode(), token.encode())
    return not any(header in request.META for header in _PROXY_HEADERS)


@never_cache
@require_GET
def metrics_view(request: HttpRequest, collectors: Iterable[Collector] = ()) -> HttpResponse:
    """Return the metrics in the Prometheus text format; 404 through a public route or without the token.

    collectors: the per-scrape ones, given by urls.py.
    """
    if not _may_scrape(request):
        # 404, not 401: nothing says there is something to authenticate for.
        return HttpResponse("Not found.\n", status=404, content_type="text/plain")
    # The classic text format (0.0.4) that every Prometheus version reads; names use only legacy characters.
    return HttpResponse(generate_latest(scrape_registry(collectors=collectors)), content_type=CONTENT_TYPE_PLAIN_0_0_4)
