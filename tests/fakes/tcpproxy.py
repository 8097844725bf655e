"""A loopback TCP proxy that a test can cut and restore, to take a dependency (PostgreSQL, Redis) away.

Usage in a test::

    with TcpProxy(upstream=("127.0.0.1", 5432)) as proxy:
        env = {"DATABASE_URL": f"postgres://postgres@127.0.0.1:{proxy.port}/test_db"}
        ...
        proxy.cut()        # every open connection is reset and new ones are refused: the server is "down"
        proxy.cut(blackhole=True)  # or: connections are accepted but nothing is ever forwarded (a partition)
        proxy.restore()    # the same port forwards again

The port stays the same across cut()/restore(), so processes configured with it reconnect by themselves.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import struct
import threading
from types import TracebackType
from typing import Self

logger = logging.getLogger(__name__)

_CHUNK = 65536


class TcpProxy:
    """Forward 127.0.0.1:<port> to an upstream address until cut."""

    def __init__(self, upstream: tuple[str, int], *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = upstream
        self.host = host
        self._port = port
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._blackhole = False
        self.accepted = 0

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> Self:
        """Listen and forward; return self."""
        with self._lock:
            if self._listener is not None:
                return self
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self._port))
            listener.listen(512)
            self._port = listener.getsockname()[1]
            self._listener = listener
            self._accept_thread = threading.Thread(
                target=self._accept_loop, args=(listener,), name=f"TcpProxy:{self._port}", daemon=True
            )
            self._accept_thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and reset every open connection."""
        with self._lock:
            listener, self._listener = self._listener, None
            connections = list(self._connections)
            self._connections.clear()
        if listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone does not on Linux.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for sock in connections:
            _reset(sock)
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)
            self._accept_thread = None

    def cut(self, *, blackhole: bool = False) -> None:
        """Take the upstream away: reset open connections; refuse new ones, or accept and hang with blackhole."""
        self.stop()
        self._blackhole = blackhole
        if blackhole:
            self.start()

    def restore(self) -> None:
        """Forward again on the same port."""
        if self._blackhole:
            self.stop()
            self._blackhole = False
        self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """Return the listening port (kept across cut and restore)."""
        if not self._port:
            raise RuntimeError("TcpProxy was never started")
        return self._port

    @property
    def open_connections(self) -> int:
        """Return how many client and upstream sockets are open."""
        with self._lock:
            return len(self._connections)

    # -- forwarding ------------------------------------------------------------------------------------------

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed by stop()
            self.accepted += 1
            with self._lock:
                if self._listener is not listener:
                    _reset(client)
                    return
                self._connections.add(client)
            if self._blackhole:
                continue  # accepted and kept open, never answered: what a network partition looks like
            threading.Thread(target=self._pipe_pair, args=(client,), daemon=True).start()

    def _pipe_pair(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=5)
        except OSError as exc:
            logger.debug("TcpProxy: upstream %s refused: %s", self.upstream, exc)
            self._forget(client)
            return
        upstream.settimeout(None)
        with self._lock:
            if client not in self._connections:
                _reset(upstream)
                return
            self._connections.add(upstream)
        sockets = [client, upstream]
        try:
            while True:
                readable, _, _ = select.select(sockets, [], [], 1.0)
                with self._lock:
                    if client not in self._connections:
                        return
                for sock in readable:
                    data = sock.recv(_CHUNK)
                    if not data:
                        return
                    (upstream if sock is client else client).sendall(data)
        except OSError:
            return
        finally:
            self._forget(client)
            self._forget(upstream)

    def _forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections.discard(sock)
        _reset(sock)


def _reset(sock: socket.socket) -> None:
    """Close a socket so the peer sees a reset, as when a server process dies."""
    with contextlib.suppress(OSError):
        # SO_LINGER with a zero timeout makes close() send RST instead of a polite FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()
