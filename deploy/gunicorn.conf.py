"""Gunicorn settings for the web role: `gunicorn project.wsgi:application -c deploy/gunicorn.conf.py`.

Everything is read from the environment so the same image serves compose and Kubernetes:
WEB_CONCURRENCY (worker processes, default 2), GUNICORN_THREADS (threads per worker, default 4),
GUNICORN_TIMEOUT (seconds, default 30), GUNICORN_BIND (default 0.0.0.0:8000), LOG_LEVEL,
LOG_FORMAT (json|console), PROMETHEUS_MULTIPROC_DIR (set it so /metrics adds up all workers),
FORWARDED_ALLOW_IPS (read by gunicorn itself).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise SystemExit(f"{name} must be an integer, not {raw!r}") from exc
    if value < 1:
        raise SystemExit(f"{name} must be at least 1, not {value}")
    return value


bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
workers = _int("WEB_CONCURRENCY", 2)
threads = _int("GUNICORN_THREADS", 4)
worker_class = "gthread"
timeout = _int("GUNICORN_TIMEOUT", 30)
# Kubernetes sends SIGTERM, then SIGKILL after terminationGracePeriodSeconds (60 s in the manifests).
graceful_timeout = _int("GUNICORN_GRACEFUL_TIMEOUT", 25)
keepalive = 5
# Recycle workers now and then so a slow leak cannot grow without bound; not often: starting a worker costs about
# 3 s of CPU (Django, the admin, openai, numpy), which every 2,000 requests was more CPU than the webhooks
# themselves under a storm (docs/benchmarks.md, "One round trip per webhook").
max_requests = _int("GUNICORN_MAX_REQUESTS", 20000)
max_requests_jitter = max_requests // 10
# The root filesystem is read-only in Kubernetes; the heartbeat files live in memory when possible.
# (Gunicorn creates them with mkstemp and unlinks them at once: no predictable names.)
_SHM = "/dev/shm"  # noqa: S108 - gunicorn's documented choice for worker_tmp_dir
worker_tmp_dir = _SHM if Path(_SHM).is_dir() and os.access(_SHM, os.W_OK) else None
# Load the application in each worker, not the master: database connections are never shared
# across a fork, and a failed import shows in the worker's log with its traceback.
preload_app = False
# Gunicorn 25+ opens a control socket for gunicornc under $HOME (/nonexistent, on a read-only root
# filesystem) and logs an ERROR when it cannot; nothing here uses gunicornc.
control_socket_disable = True

loglevel = os.environ.get("LOG_LEVEL", "info").lower()
accesslog = "-"
errorlog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms request_id=%({x-request-id}o)s'

if os.environ.get("LOG_FORMAT", "console").lower() == "json":
    # One JSON object per line, like the application's own logs (python-json-logger).
    logconfig_dict: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {
                "()": "pythonjsonlogger.json.JsonFormatter",
                "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
                "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
            }
        },
        "handlers": {
            "stdout": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"},
            "stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"},
        },
        "loggers": {
            "gunicorn.error": {"handlers": ["stderr"], "level": loglevel.upper(), "propagate": False},
            "gunicorn.access": {"handlers": ["stdout"], "level": "INFO", "propagate": False},
        },
        "root": {"handlers": ["stderr"], "level": loglevel.upper()},
    }


def on_starting(server: Any) -> None:
    """Empty the Prometheus multiprocess directory: files of dead processes would be counted."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)
    server.log.info("prometheus multiprocess directory %s ready", path)


def child_exit(server: Any, worker: Any) -> None:
    """Tell prometheus_client that a worker died, so its live gauges stop counting."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
