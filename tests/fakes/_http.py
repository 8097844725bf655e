"""Shared machinery of the fake HTTP APIs: a loopback server in a daemon thread, recording and failure injection."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

logger = logging.getLogger(__name__)

JSON_TYPE = "application/json;charset=UTF-8"


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it, before any check was applied."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    received_at: float = field(default_factory=time.monotonic)

    @property
    def content_type(self) -> str:
        """Return the media type of the body without parameters, lower-cased."""
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    @property
    def form(self) -> dict[str, str]:
        """Return the url-encoded form fields of the body (empty unless the body is a form)."""
        if self.content_type != "application/x-www-form-urlencoded":
            return {}
        fields = parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True)
        return {name: values[-1] for name, values in fields.items()}

    @property
    def input_data(self) -> Any:
        """Return the parsed SDP `input_data` from the query or the form body, or None."""
        raw = self.query.get("input_data", self.form.get("input_data"))
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return None

    @property
    def json(self) -> Any:
        """Return the body parsed as JSON, or None when it is empty or not JSON."""
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None


@dataclass
class Reply:
    """An answer the fake sends back; `status=None` drops the connection without answering."""

    status: int | None
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload: Any, headers: dict[str, str] | None = None) -> Reply:
        """Return a JSON reply."""
        return cls(status, json.dumps(payload).encode(), {"Content-Type": JSON_TYPE, **(headers or {})})

    @classmethod
    def raw(cls, status: int, body: Any, headers: dict[str, str] | None = None) -> Reply:
        """Return a reply whose body is given by a test: JSON for dicts and lists, HTML for text."""
        if isinstance(body, dict | list):
            return cls.json(status, body, headers)
        data = body if isinstance(body, bytes) else str(body).encode()
        return cls(status, data, {"Content-Type": "text/html;charset=UTF-8", **(headers or {})})


@dataclass
class Failure:
    """A queued failure: the next `remaining` matching requests get it instead of a normal answer."""

    remaining: int
    status: int | str
    path_contains: str | None = None
    method: str | None = None
    retry_after: float | None = None
    body: Any = None
    delay: float = 0.0
    process: bool = True

    def matches(self, request: RecordedRequest) -> bool:
        """Return whether this failure applies to the request."""
        if self.method and self.method.upper() != request.method:
            return False
        return not (self.path_contains and self.path_contains not in request.path)

    def retry_after_header(self) -> dict[str, str]:
        """Return the Retry-After header to send, if one was asked for."""
        if self.retry_after is None:
            return {}
        value = self.retry_after
        # Whole seconds are the standard form; fractions let tests keep retries fast.
        return {"Retry-After": str(int(value)) if float(value).is_integer() else str(value)}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Sleeping or keep-alive handler threads must not hold up stop().
    block_on_close = False
    # Load benchmarks open hundreds of connections at once; the default backlog of 5 refuses them.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], fake: FakeServer) -> None:
        self.fake = fake
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        # A client that timed out and hung up is a normal event for these fakes, not an error.
        if isinstance(error, OSError):
            logger.debug("fake server: client %s went away: %s", client_address, error)
        else:
            logger.error("fake server failed serving %s", client_address, exc_info=error)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 keeps connections alive like real servers do, so client connection pools are exercised.
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def log_message(self, fmt: str, *args: Any) -> None:
        logger.debug("%s: %s", type(self.server.fake).__name__, fmt % args)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # Trailer section ends with an empty line.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        url = urlsplit(self.path)
        query = {name: values[-1] for name, values in parse_qs(url.query, keep_blank_values=True).items()}
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        request = RecordedRequest(
            method=self.command, path=url.path, query=query, headers=headers, body=self._read_body()
        )
        reply = self.server.fake._dispatch(request)
        if reply.status is None:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
        except OSError:
            # The client gave up waiting (a timeout test); nothing left to answer.
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


class FakeServer:
    """Base of the fakes: start/stop a loopback HTTP server, record requests, inject failures."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, latency: float = 0.0) -> None:
        self.host = host
        self.latency = latency
        self.requests_log: list[RecordedRequest] = []
        self._requested_port = port
        self._lock = threading.RLock()
        self._failures: list[Failure] = []
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._bound_port: int | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start serving in a daemon thread and return self."""
        if self._httpd is not None:
            return self
        self._stopping.clear()
        self._httpd = _Server((self.host, self._requested_port), self)
        # A restart keeps the port, so URLs stored in tenants stay valid across stop()/start().
        self._bound_port = self._requested_port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            # stop() waits up to one poll interval; a short one keeps per-test teardown fast.
            kwargs={"poll_interval": 0.01},
            name=f"{type(self).__name__}:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close kept-alive connections and wake sleeping handlers."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        # Pooled keep-alive connections would otherwise still reach a "stopped" fake.
        with httpd.connections_lock:
            connections = list(httpd.connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def run_forever(self, announce: Callable[[], None] | None = None) -> None:
        """Serve in the foreground until Ctrl-C or SIGTERM."""

        def _terminate(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, _terminate)
        self.start()
        if announce is not None:
            announce()
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    @property
    def port(self) -> int:
        """Return the bound port (kept after stop()); raises RuntimeError if never started."""
        if self._bound_port is None:
            raise RuntimeError(f"{type(self).__name__} was never started")
        return self._bound_port

    @property
    def origin(self) -> str:
        """Return `http://host:port` of the running server."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}"

    # -- state -----------------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget recorded requests and pending failures, and set latency back to zero."""
        with self._lock:
            self.requests_log.clear()
            self._failures.clear()
            self.latency = 0.0

    def _queue_failure(self, failure: Failure) -> None:
        if failure.remaining < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            self._failures.append(failure)

    def _take_failure(self, request: RecordedRequest) -> Failure | None:
        with self._lock:
            for failure in self._failures:
                if failure.matches(request):
                    failure.remaining -= 1
                    if failure.remaining == 0:
                        self._failures.remove(failure)
                    return failure
        return None

    def pending_failures(self) -> int:
        """Return how many injected failures have not been served yet."""
        with self._lock:
            return sum(failure.remaining for failure in self._failures)

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    # -- request handling ------------------------------------------------------------------------------------

    def _dispatch(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self.requests_log.append(request)
        self._sleep(self.latency)
        try:
            failure = self._take_failure(request)
            if failure is None:
                return self.handle(request)
            if failure.status == "disconnect":
                return Reply(None)
            if failure.status == "timeout":
                # process=True: the work is done (e.g. the note is stored) but the answer comes too late.
                reply = self.handle(request) if failure.process else self.gateway_timeout_reply()
                self._sleep(failure.delay)
                return reply
            return self.failure_reply(failure, request)
        except Exception:
            logger.exception("%s crashed on %s %s", type(self).__name__, request.method, request.path)
            return Reply(500, b"fake server crashed; see the test log", {"Content-Type": "text/plain"})

    def handle(self, request: RecordedRequest) -> Reply:
        """Return the normal answer to a request."""
        raise NotImplementedError

    def failure_reply(self, failure: Failure, request: RecordedRequest) -> Reply:
        """Return the answer for an injected failure other than timeout or disconnect."""
        raise NotImplementedError

    def gateway_timeout_reply(self) -> Reply:
        """Return the answer a timed-out, unprocessed request finally gets."""
        return Reply(504, b"<html><body>504 Gateway Time-out</body></html>", {"Content-Type": "text/html"})
