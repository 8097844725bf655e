"""How a qcluster worker process runs enhancements: several at once in threads, with a heartbeat and a sweep.

A Django-Q worker is a process that runs one task at a time, and an enhancement spends seconds waiting on the
LLM and SDP for milliseconds of CPU. So inside a worker the task only hands the enhancement to a bounded pool
of `ENHANCEMENT_THREADS` threads and returns; when every thread is busy it waits for one, so a worker never
takes more work from the queue than it can run. The row stays the truth: the thread claims it with the same
conditional update as before, and the row says who runs it (`worker`) and that it is alive (`heartbeat_at`).

A daemon thread per worker process beats every `ENHANCEMENT_HEARTBEAT_SECONDS` for the rows this process runs,
and every `ENHANCEMENT_SWEEP_SECONDS` one worker of the whole deployment (a cache lock) runs the sweep, which
takes back a running row whose beat is older than `ENHANCEMENT_DEAD_AFTER`: a dead worker's task is queued again
within about a minute, while a live worker's slow LLM call keeps beating and is left alone. Outside a worker
(tests, the admin) `run_enhancement` runs inline, as before.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import close_old_connections, connections
from django.utils import timezone

from project.logging import log_context

logger = logging.getLogger(__name__)

SWEEP_LOCK = "enhancements:sweep-lock"

_lock = threading.Lock()
_in_flight: Counter[str] = Counter()
_state: dict[str, Any] = {"worker": False, "pid": None, "pool": None, "slots": None, "beat": None}


def worker_name() -> str:
    """Return host:pid of this process, as recorded on the rows it claims."""
    return f"{socket.gethostname()}:{os.getpid()}"


@contextmanager
def tracked(enhancement_id: str) -> Iterator[None]:
    """Keep the heartbeat going for the enhancement while the block runs."""
    _ensure_heartbeat()
    with _lock:
        _in_flight[enhancement_id] += 1
    try:
        yield
    finally:
        with _lock:
            _in_flight[enhancement_id] -= 1
            if _in_flight[enhancement_id] <= 0:
                del _in_flight[enhancement_id]


def in_flight() -> list[str]:
    """Return the ids of the enhancements this process is running."""
    with _lock:
        return list(_in_flight)


def run_enhancement(enhancement_id: str) -> str:
    """Run one attempt of the pipeline in this thread, with the heartbeat; return the resulting status."""
    from enhancements import services
    from enhancements.models import Enhancement

    # Bind the originating webhook's request id, so one ticket can be followed from webhook to note.
    request_id = Enhancement.objects.filter(pk=enhancement_id).values_list("request_id", flat=True).first()
    with log_context(request_id=request_id or None, enhancement_id=str(enhancement_id)), tracked(enhancement_id):
        return services.enhancement_process(enhancement_id=enhancement_id)


def submit(enhancement_id: str) -> str:
    """Run the enhancement in this worker's thread pool ("submitted"), or inline outside a worker."""
    if not _state["worker"] or settings.ENHANCEMENT_THREADS <= 1 or _state["pid"] != os.getpid():
        return run_enhancement(enhancement_id)
    slots: threading.BoundedSemaphore = _state["slots"]
    # Wait for a free thread: the worker takes its next task from the queue only when it can run it.
    slots.acquire()
    try:
        _state["pool"].submit(_run_in_thread, enhancement_id)
    except BaseException:
        slots.release()
        raise
    return "submitted"


def _run_in_thread(enhancement_id: str) -> None:
    try:
        # What Django does around a request: drop a connection that broke or outlived CONN_MAX_AGE.
        close_old_connections()
        run_enhancement(enhancement_id)
    except Exception:
        # enhancement_process records every failure on the row; this is a database outage or a bug.
        # The row stays running with a heartbeat that stops with this attempt, so the sweep retries it.
        logger.exception("enhancement %s: the attempt stopped with an error", enhancement_id)
    finally:
        close_old_connections()
        _state["slots"].release()


def start_worker(**_: Any) -> None:
    """Make this process a pipeline worker: a thread pool, the heartbeat and the sweep (django-q post_spawn)."""
    threads = settings.ENHANCEMENT_THREADS
    with _lock:
        _state.update(
            worker=True,
            pid=os.getpid(),
            # Not daemon threads: a stopping worker (SIGTERM, recycle) finishes what it started before it exits.
            pool=ThreadPoolExecutor(max_workers=threads, thread_name_prefix="enhancement"),
            slots=threading.BoundedSemaphore(threads),
            beat=None,
        )
    _ensure_heartbeat()


def _ensure_heartbeat() -> None:
    with _lock:
        beat = _state["beat"]
        if beat is not None and beat.is_alive() and _state.get("beat_pid") == os.getpid():
            return
        beat = threading.Thread(target=_heartbeat_loop, name="enhancement-heartbeat", daemon=True)
        _state["beat"], _state["beat_pid"] = beat, os.getpid()
    beat.start()


def beat_once() -> int:
    """Record that this process is alive for the rows it runs; return how many rows were touched."""
    from enhancements.models import Enhancement

    ids = in_flight()
    if not ids:
        return 0
    return Enhancement.objects.filter(pk__in=ids, status=Enhancement.Status.RUNNING, worker=worker_name()).update(
        heartbeat_at=timezone.now()
    )


def sweep_if_due() -> dict[str, int] | None:
    """Run the sweep unless another worker ran it in the last ENHANCEMENT_SWEEP_SECONDS; return its result."""
    from enhancements.services import enhancement_sweep

    if not cache.add(SWEEP_LOCK, worker_name(), timeout=max(1, int(settings.ENHANCEMENT_SWEEP_SECONDS * 0.9))):
        return None
    return enhancement_sweep()


def _heartbeat_loop() -> None:
    interval = settings.ENHANCEMENT_HEARTBEAT_SECONDS
    sweep_every = settings.ENHANCEMENT_SWEEP_SECONDS
    up_since: float | None = None
    next_sweep = time.monotonic() + random.uniform(0, sweep_every)
    while True:
        time.sleep(min(interval, sweep_every))
        try:
            close_old_connections()
            beat_once()
            now = time.monotonic()
            up_since = up_since or now
            # After a database outage every worker's beats are stale: sweep only once this process has been
            # able to write for two intervals, so the live workers have beaten again by then.
            if _state["worker"] and now >= next_sweep and now - up_since >= 2 * interval:
                next_sweep = now + sweep_every
                sweep_if_due()
        except Exception as exc:
            up_since = None
            logger.warning("heartbeat: could not reach the database or the cache: %s", exc)
            connections.close_all()
