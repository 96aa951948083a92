"""One deadline for a whole webhook try: a watchdog that shuts the try's socket down when the
time is up, and the urllib3 connection pools whose connections tell it which socket that is.

urllib3's `Timeout(total=...)` bounds each socket operation, not their sum: a receiver that
sends its answer one byte at a time, each byte within the time-out, keeps a try going for as
long as it likes. A `Watchdog(seconds)` is started for the network part of a try; at its
deadline its timer shuts the socket of the try's connection down (both ways), so that whatever
the try's thread is blocked in (the TLS handshake, sending, the answer's head or its body)
returns at once, and `finish()` tells the try whether that happened (the answer is then thrown
away, and its connection is not kept).

The connections of `WatchedHTTPConnectionPool` and `WatchedHTTPSConnectionPool` find the
watchdog in a thread-local set by `watching()`: urllib3 takes a connection from its pool inside
`urlopen()`, out of the caller's sight, and a thread makes one try at a time. A connection
reports itself before it connects, once connected (a deadline that passed while it connected)
and before each request it carries (a kept connection, used again).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection

_current = threading.local()  # .watchdog: the Watchdog of the try this thread is making


class Watchdog:
    """Shuts the watched connection's socket down `seconds` from now, unless finished first."""

    def __init__(self, seconds: float) -> None:
        self._lock = threading.Lock()
        self._connection: HTTPConnection | None = None
        self._finished = False
        self.expired = False  # the time ran out before finish()
        self._timer = threading.Timer(max(0.0, seconds), self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, connection: HTTPConnection) -> None:
        """The connection the try uses now; shut down at once if the time is up already."""
        with self._lock:
            self._connection = connection
            late = self.expired and not self._finished
        if late:
            _shut_down(connection)

    def finish(self) -> bool:
        """Stop watching (the try is over); whether the time ran out first."""
        with self._lock:
            self._finished = True
        self._timer.cancel()
        return self.expired

    def _expire(self) -> None:
        with self._lock:
            if self._finished:
                return
            self.expired = True
            connection = self._connection
        if connection is not None:
            _shut_down(connection)


def _shut_down(connection: HTTPConnection) -> None:
    sock = connection.sock
    if sock is None:  # not connected yet: watch() after connecting shuts it down
        return
    # socket.socket's own shutdown, also for an SSLSocket: the TLS layer is not told (it is in
    # use by the try's thread); the reads and writes under it end at once. OSError: closed.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


@contextmanager
def watching(watchdog: Watchdog) -> Iterator[Watchdog]:
    """Let the connections this thread uses report to `watchdog` while in the block."""
    _current.watchdog = watchdog
    try:
        yield watchdog
    finally:
        _current.watchdog = None


def _report(connection: HTTPConnection) -> None:
    watchdog = getattr(_current, "watchdog", None)
    if watchdog is not None:
        watchdog.watch(connection)


class _Watched:
    """Reports the connection to the try's watchdog before and after connecting and before
    each request (for HTTPS the raw socket is its `sock` during the TLS handshake, so a
    handshake that drags on is cut off too)."""

    def connect(self) -> None:
        _report(self)
        super().connect()  # type: ignore[misc]
        _report(self)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _report(self)
        super().request(*args, **kwargs)  # type: ignore[misc]


class WatchedHTTPConnection(_Watched, HTTPConnection):
    """An HTTPConnection that reports itself to the try's watchdog."""


class WatchedHTTPSConnection(_Watched, HTTPSConnection):
    """An HTTPSConnection that reports itself to the try's watchdog."""


class WatchedHTTPConnectionPool(urllib3.HTTPConnectionPool):
    ConnectionCls = WatchedHTTPConnection


class WatchedHTTPSConnectionPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = WatchedHTTPSConnection
