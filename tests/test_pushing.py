"""The pusher thread (enhancements.services.pushing.BatchPusher): batching, failures, stop, fork and exit."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from enhancements.services.pushing import BatchPusher

ROOT = Path(__file__).resolve().parent.parent


def _wait(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# --- batching and failures ------------------------------------------------------------------------------
def test_ids_that_come_in_while_a_batch_is_sent_go_together_in_the_next_one() -> None:
    sent: list[list[str]] = []
    first_sent, release = threading.Event(), threading.Event()

    def send(batch: list[str]) -> bool:
        sent.append(batch)
        first_sent.set()
        release.wait(10)
        return True

    pusher = BatchPusher(name="test-pusher", send=send, give_up=print, batch_max=3)
    pusher.submit("a")
    assert first_sent.wait(10)
    for item in "bcde":
        pusher.submit(item)
    release.set()
    _wait(lambda: sum(map(len, sent)) == 5, 10, "every id sent")
    assert sent == [["a"], ["b", "c", "d"], ["e"]]  # in order, at most batch_max per call
    pusher.stop()


def test_stop_sends_what_is_queued_and_a_failing_send_does_not_stop_the_thread() -> None:
    sent: list[str] = []

    def send(batch: list[str]) -> bool:
        if "boom" in batch:
            raise RuntimeError("the sender failed")
        time.sleep(0.05)
        sent.extend(batch)
        return True

    pusher = BatchPusher(name="test-pusher", send=send, give_up=print, batch_max=1)
    for item in ("boom", "x", "y", "z"):
        pusher.submit(item)
    pusher.stop()  # what an exiting process's atexit does
    assert sent == ["x", "y", "z"]
    pusher.submit("after")  # a submit after stop starts a thread again
    pusher.stop()
    assert sent[-1] == "after"


def test_ids_a_moment_apart_share_a_batch_and_stop_does_not_wait_for_the_moment() -> None:
    sent: list[list[str]] = []
    pusher = BatchPusher(name="test-pusher", send=lambda batch: sent.append(batch) or True, give_up=print, linger=30.0)
    for item in ("a", "b", "c"):
        pusher.submit(item)
        time.sleep(0.01)
    pusher.stop(timeout=5)  # sends at once: a stop that waited out the 30 s linger would leave nothing sent
    assert sent == [["a", "b", "c"]]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread is made to die
def test_after_a_failed_send_what_queued_meanwhile_is_given_up_at_once_and_a_dead_thread_is_replaced() -> None:
    sent: list[str] = []
    given_up: list[list[str]] = []
    failing, queued = threading.Event(), threading.Event()

    def send(batch: list[str]) -> bool:
        if batch == ["die"]:
            raise SystemExit  # ends the thread (not an Exception)
        if batch == ["down"]:
            failing.set()
            queued.wait(10)  # the broker's timeout, while webhooks keep coming
            return False
        sent.extend(batch)
        return True

    pusher = BatchPusher(name="test-pusher", send=send, give_up=given_up.append, batch_max=2)
    pusher.submit("down")
    assert failing.wait(10)
    for item in ("a", "b", "c", "d", "e"):
        pusher.submit(item)
    queued.set()
    _wait(lambda: bool(given_up), 10, "the give-up")
    assert given_up == [["a", "b", "c", "d", "e"]] and sent == []  # one call, not a timeout per batch
    pusher.submit("die")
    _wait(lambda: not pusher._thread or not pusher._thread.is_alive(), 10, "the thread to end")
    pusher.submit("after")  # starts a new thread
    _wait(lambda: sent == ["after"], 10, "the new thread to send")
    pusher.stop()


# --- stop, fork and exit ----------------------------------------------------------------------------------
def test_stop_on_a_send_that_hangs_waits_only_its_timeout_and_warns(caplog) -> None:
    sending, release, returned = threading.Event(), threading.Event(), threading.Event()

    def send(batch: list[str]) -> bool:
        sending.set()
        release.wait(30)  # a broker that does not answer
        returned.set()
        return True

    pusher = BatchPusher(name="test-pusher", send=send, give_up=print)
    pusher.submit("a")
    assert sending.wait(10)
    with caplog.at_level(logging.WARNING, logger="enhancements.services.pushing"):
        pusher.stop(timeout=1.0)
    try:
        assert not returned.is_set()  # stop came back while the send still hung: it did not wait for it
        assert "test-pusher: still sending after 1 s; the sweep enqueues what is left" in caplog.text
    finally:
        release.set()
    assert returned.wait(10)


def test_after_a_stop_that_timed_out_the_next_thread_sends_what_comes_next_and_the_hung_one_takes_none_of_it() -> None:
    """Each thread has its own queue: the thread left hanging by stop() must not take a later thread's ids (with
    one shared queue the new thread took the old one's stop mark and ended, and the hung one sent the new ids)."""
    release = threading.Event()
    sent: list[tuple[str, list[str]]] = []

    def send(batch: list[str]) -> bool:
        if batch == ["a"]:
            release.wait(30)  # a broker that does not answer
        sent.append((threading.current_thread().name + str(threading.get_ident()), batch))
        return True

    pusher = BatchPusher(name="test-pusher", send=send, give_up=print, linger=0.01)
    pusher.submit("a")
    _wait(lambda: pusher._thread is not None, 10, "the first thread")
    hung = pusher._thread
    time.sleep(0.1)  # the first thread is inside send(["a"])
    pusher.stop(timeout=0.2)
    assert hung is not None and hung.is_alive()
    pusher.submit("b")
    pusher.submit("c")
    _wait(lambda: any("b" in batch for _, batch in sent), 10, "b sent by the next thread")
    release.set()
    hung.join(10)
    assert not hung.is_alive()  # it ended at its own stop mark
    pusher.stop(timeout=10)
    senders = {batch[0]: who for who, batch in sent}
    assert sorted(id_ for _, batch in sent for id_ in batch) == ["a", "b", "c"]
    assert senders["a"] != senders["b"]  # b and c went with the next thread, not the hung one


def test_a_forked_child_leaves_the_parents_ids_to_the_parent_and_sends_its_own_from_a_thread_of_its_own() -> None:
    parent = os.getpid()
    sent: list[tuple[int, str, list[str]]] = []  # (process, thread, batch)
    sending, release = threading.Event(), threading.Event()

    def send(batch: list[str]) -> bool:
        sent.append((os.getpid(), threading.current_thread().name, batch))
        if os.getpid() == parent and batch == ["p1"]:
            sending.set()
            release.wait(10)  # holds the parent's thread while p2 and p3 wait in its queue
        return True

    pusher = BatchPusher(name="test-pusher", send=send, give_up=print)
    pusher.submit("p1")
    assert sending.wait(10)
    pusher.submit("p2")
    pusher.submit("p3")
    reading, writing = os.pipe()
    child = os.fork()
    if child == 0:  # the child: report what its own process sent, then leave without pytest's cleanup
        code = 1
        try:
            os.close(reading)
            pusher.submit("c1")
            pusher.stop(timeout=10)
            mine = [(thread, batch) for pid, thread, batch in sent if pid == os.getpid()]
            os.write(writing, json.dumps(mine).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(writing)
    with os.fdopen(reading, "rb") as pipe:
        report = pipe.read()
    _, status = os.waitpid(child, 0)
    release.set()
    pusher.stop(timeout=10)
    assert os.waitstatus_to_exitcode(status) == 0
    # In the child: only its own id, sent by a pusher thread started there (the parent's does not exist in it).
    assert json.loads(report) == [["test-pusher", ["c1"]]]
    # In the parent: its ids, all of them, by its own thread; nothing of the child's.
    assert sent == [(parent, "test-pusher", ["p1"]), (parent, "test-pusher", ["p2", "p3"])]


def test_a_process_that_exits_normally_sends_what_it_still_held(tmp_path) -> None:
    """The atexit flush: with a 30 s linger the thread would still be gathering when the interpreter ends."""
    out = tmp_path / "sent.txt"
    script = textwrap.dedent(
        """
        import sys
        import django
        django.setup()
        from enhancements.services.pushing import BatchPusher

        def send(batch):
            with open(sys.argv[1], "a") as out:
                out.write(" ".join(batch) + "\\n")
            return True

        pusher = BatchPusher(name="exit-pusher", send=send, give_up=print, linger=30.0)
        for item in ("a", "b", "c"):
            pusher.submit(item)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DJANGO_SETTINGS_MODULE": "project.settings"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "could not" not in done.stderr, done.stderr[-2000:]
    assert out.read_text() == "a b c\n"  # one batch, sent at exit
