"""A thread per process that hands committed rows' ids to a sender in batches, off the request threads.

The webhook answers once its row is committed (the row is the truth); pushing the row's task to the broker only
tells a worker now rather than at the next sweep. On the request thread that push was a blocking Redis round trip
per webhook, and under load each blocking call gives up the GIL and waits to get it back. Here the request thread
puts the id in a queue and answers; one thread per process sends everything that has come in meanwhile, so a
burst costs one round trip per batch (docs/benchmarks.md, "One round trip per webhook": with the health check
gone too, 20-30 % less CPU per webhook).

What a process holds here and has not sent is not lost when the process dies: the rows are committed, queued,
with enqueued_at set, and the sweep enqueues them after ENHANCEMENT_DEAD_AFTER (nothing waiting in the broker)
or ENHANCEMENT_STUCK_AFTER. On a normal exit (gunicorn's graceful stop, max_requests recycling) the rest is sent
first, from atexit.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

from django.db import connections

logger = logging.getLogger(__name__)

_STOP = object()


class BatchPusher:
    """Send what submit() was given, in order, from one daemon thread: at most batch_max ids per call of send,
    gathered for linger seconds after the first. send returns whether the batch was handed over; after a
    failed one, everything queued meanwhile goes to give_up in one call (during a broker outage the queue would
    otherwise grow by what arrives while each send waits out its timeout)."""

    def __init__(
        self,
        *,
        name: str,
        send: Callable[[list[str]], bool],
        give_up: Callable[[list[str]], Any],
        batch_max: int = 256,
        linger: float = 0.02,
    ) -> None:
        self.name = name
        self.send = send
        self.give_up = give_up
        self.batch_max = batch_max
        self.linger = linger
        self._reset()
        os.register_at_fork(after_in_child=self._reset)
        atexit.register(self.stop)

    def _reset(self) -> None:
        # In a forked child: the parent's thread does not exist here, and what it holds is the parent's to send.
        # The running thread's queue and stop signal: each thread has its own, so a thread that outlives stop()
        # (a send hung past its timeout) never takes what a later thread was given.
        self._pending: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stopping = threading.Event()  # set by stop() to cut the thread's gathering short
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, item: str) -> None:
        """Queue item for the next batch; start the thread on first use in this process (or if it died)."""
        self._pending.put(item)
        thread = self._thread
        if thread is None or not thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():  # a thread that died is replaced
                    args = (self._pending, self._stopping)
                    thread = threading.Thread(target=self._run, args=args, name=self.name, daemon=True)
                    thread.start()
                    self._thread = thread

    def stop(self, timeout: float = 10.0) -> None:
        """Send what is queued and stop the thread (called at exit); what is submitted later starts a new one."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None:
                return
            pending, stopping = self._pending, self._stopping
            self._pending, self._stopping = queue.SimpleQueue(), threading.Event()  # for the next thread
        pending.put(_STOP)
        stopping.set()
        thread.join(timeout)
        if thread.is_alive():
            logger.warning("%s: still sending after %.0f s; the sweep enqueues what is left", self.name, timeout)

    def _run(self, pending: queue.SimpleQueue[Any], stopping: threading.Event) -> None:
        full = False
        while True:
            batch: list[str] = []
            item = pending.get()
            if item is not _STOP and not full:
                # Gather for linger seconds after the first id, asleep: at a few hundred webhooks a second per
                # process ids come milliseconds apart, and sending each at once would cost a round trip per webhook
                # again. Sleeping (until stop() is called) rather than waiting on the queue for each id also spares
                # a thread switch, and a turn of the GIL, per webhook. A batch that filled up is followed at once by
                # the next.
                stopping.wait(self.linger)
            while item is not _STOP:
                batch.append(item)
                if len(batch) >= self.batch_max:
                    break
                try:
                    item = pending.get_nowait()
                except queue.Empty:
                    break
            full = len(batch) >= self.batch_max
            if batch:
                self._send(batch, pending)
            if item is _STOP:
                # A submit that read the queue just before stop() swapped it put its id after the stop mark.
                late, _ = _drain(pending)
                if late:
                    self._send(late, pending)
                self._close_connections(every=True)
                return

    def _send(self, batch: list[str], pending: queue.SimpleQueue[Any]) -> None:
        try:
            if not self.send(batch):
                left, stopped = _drain(pending)
                if stopped:
                    pending.put(_STOP)  # seen again by the loop, after the give-up
                if left:
                    self.give_up(left)
        except Exception:
            # The sender and give_up leave failures to the sweep themselves; this only keeps the thread alive.
            logger.exception("%s: could not send %d ids; the sweep enqueues them", self.name, len(batch))
        self._close_connections(every=False)

    def _close_connections(self, *, every: bool) -> None:
        """Close this thread's database connections that are broken or past CONN_MAX_AGE (every=True: all); no
        request cycle does it for this thread."""
        try:
            for conn in connections.all(initialized_only=True):
                if every:
                    conn.close()
                else:
                    conn.close_if_unusable_or_obsolete()
        except Exception:
            logger.warning("%s: could not close a database connection", self.name, exc_info=True)


def _drain(pending: queue.SimpleQueue[Any]) -> tuple[list[str], bool]:
    """Take what is queued now, up to a stop mark; return it and whether the mark was reached."""
    items: list[str] = []
    while True:
        try:
            item = pending.get_nowait()
        except queue.Empty:
            return items, False
        if item is _STOP:
            return items, True
        items.append(item)
