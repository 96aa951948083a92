"""gunicorn's gthread worker, with each request read whole before a thread takes it.

gthread hands a connection to one of its threads as soon as it is readable, and that thread
then reads the head and the body with blocking reads: 100 clients sending their headers a byte
at a time held every thread, and normal calls timed out (PITFALLS, "Servers and threads").
`BufferingThreadWorker` reads each request in the worker's own poller loop instead, without
blocking, and submits the connection to the thread pool only once the head and the whole body
(up to the app's MAX_CONTENT_LENGTH) are in memory; the thread parses from that buffer and never
waits on the client. Knowing the request line before a thread takes it, the worker gives long
polls (`GET /email-status/<id>?wait=N`) threads of their own and calls the app's stop hooks as
it starts to stop, so that waiters answer at once (`LongPollThreads`, long_poll.py). The rest is
gthread's own code: the thread pool, the WSGI call, keep-alive, graceful shutdown and every
server hook. `gunicorn.conf.py` selects it.

Bounds, per worker process (class attributes):
- HEAD_SECONDS (10): the head must be in within this long of the wait for it starting (a new
  connection, or a kept-alive one turning readable); REQUEST_SECONDS (60) for head and body
  together. Past either: 408 and close.
- MAX_HEAD_BYTES (64 KiB): a larger head gets 431. A chunked body that cannot be followed: 400.
- MAX_BUFFERING (256) connections buffer at once; one more closes the one waiting longest
  (408), so that slow clients cannot stop the worker accepting.
- BUFFER_MAX_BYTES (64 MiB) buffered at once: past it only the largest buffer keeps reading
  (the others wait and TCP pushes back on their clients), so the biggest request finishes first.
- A body declared larger than MAX_CONTENT_LENGTH is not read: the thread gets the head at once,
  the app answers 413, and the connection is closed after that answer.
- WAIT_THREADS (256) threads serve long polls, made as they are needed, apart from the
  GUNICORN_THREADS that serve everything else; past it long polls queue for one of them.
- Closing after a response lingers (half-close, then discard what the client still sends, for
  LINGER_SECONDS or LINGER_MAX_BYTES) inside the poller loop: gunicorn does that in the loop's
  own thread with blocking reads, so a client that never closed stalled the loop for 2 s.

Plain HTTP/1.x only: TLS, HTTP/2 and the PROXY protocol are refused at start-up.
"""

from __future__ import annotations

import contextlib
import errno
import json
import selectors
import socket
import time
from functools import partial
from http import HTTPStatus
from typing import Any

from gunicorn import util
from gunicorn.errors import ConfigError
from gunicorn.workers.gthread import TConn, ThreadWorker

from mailservice.serving.http_framing import RequestScanner, Verdict
from mailservice.serving.long_poll import LongPollThreads

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def error_answer(status: int, detail: str) -> bytes:
    """A complete problem+json answer that closes the connection (the API's error shape)."""
    phrase = HTTPStatus(status).phrase
    body = json.dumps(
        {"type": "about:blank", "title": phrase, "status": status, "detail": detail}
    ).encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/problem+json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class BufferedConn(TConn):
    """gthread's connection, with the request being buffered for it and a lingering close."""

    def __init__(self, cfg: Any, sock: socket.socket, client: Any, server: Any, worker: Any):
        super().__init__(cfg, sock, client, server)
        self.worker = worker
        self.buffer = bytearray()
        self.scanner: RequestScanner | None = None
        self.started = 0.0
        self.registered = False
        self.sent_continue = False
        self.close_after = False

    def begin(self, now: float, data: bytes) -> None:
        """Start buffering the next request, from `data` already read ahead."""
        self.buffer = bytearray(data)
        self.scanner = RequestScanner(self.worker.MAX_HEAD_BYTES, self.worker.max_body)
        self.started = now
        self.sent_continue = self.close_after = False

    def close(self, graceful: bool = False) -> None:
        if graceful:
            self.worker.linger(self.sock)
        else:
            util.close(self.sock)


class BufferingThreadWorker(LongPollThreads, ThreadWorker):
    """A gthread worker whose threads only ever see requests that are already complete."""

    HEAD_SECONDS = 10.0
    REQUEST_SECONDS = 60.0
    MAX_HEAD_BYTES = 64 * 1024
    MAX_BUFFERING = 256
    BUFFER_MAX_BYTES = 64 * 1024 * 1024
    LINGER_SECONDS = 2.0
    LINGER_MAX_BYTES = 64 * 1024
    RECV_BYTES = 256 * 1024
    SWEEP_SECONDS = 0.25  # how often deadlines are checked: not on every event
    STOP_SECONDS = 5.0  # a stopping worker waits this long at most for requests still arriving
    DEFAULT_MAX_BODY = 10 * 1024 * 1024  # when the app has no MAX_CONTENT_LENGTH

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.buffering: dict[BufferedConn, None] = {}  # in the order they started: oldest first
        self.buffered_bytes = 0
        self.paused: dict[BufferedConn, None] = {}
        self.lingering: dict[socket.socket, list[float]] = {}  # socket -> [deadline, bytes]
        self.max_body = self.DEFAULT_MAX_BODY
        self._next_sweep = 0.0
        self._stop_by: float | None = None

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        super().check_config(cfg, log)
        if cfg.is_ssl or cfg.http2_cleartext != "off" or cfg.proxy_protocol != "off":
            raise ConfigError(
                "BufferingThreadWorker serves plain HTTP/1.x: terminate TLS, HTTP/2 and the "
                "PROXY protocol in front of it"
            )

    def run(self) -> None:
        limit = getattr(self.wsgi, "config", {}).get("MAX_CONTENT_LENGTH")
        self.max_body = int(limit) if limit else self.DEFAULT_MAX_BODY
        try:
            super().run()
        finally:
            for conn in list(self.buffering):
                util.close(conn.sock)
            for sock in list(self.lingering):
                util.close(sock)

    # -- into the buffer ---------------------------------------------------------------------

    def accept(self, listener: socket.socket) -> None:
        """gthread's accept, making a BufferedConn (non-blocking) instead of a TConn."""
        try:
            client_sock, client_addr = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = BufferedConn(self.cfg, client_sock, client_addr, listener.getsockname(), self)
        self.enqueue_req(conn)

    def enqueue_req(self, conn: BufferedConn) -> None:  # type: ignore[override]
        """Buffer the connection's next request; a thread gets it once it is whole.

        gthread calls this for a new connection, for a kept-alive one that turned readable,
        and for one whose last request was followed by bytes already read (pipelining).
        """
        ahead = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        conn.sock.setblocking(False)
        conn.begin(time.monotonic(), ahead)
        self.buffering[conn] = None
        self.buffered_bytes += len(ahead)
        if len(self.buffering) > self.MAX_BUFFERING:
            oldest = next(iter(self.buffering))
            self._give_up(oldest, 408, "Too many requests are arriving slowly at once.")
            if oldest is conn:
                return
        if ahead:
            self._check(conn)
        # The socket is often readable already (a kept-alive one that woke the poller, a new
        # one whose client wrote at once): read now rather than one poller round later.
        if conn in self.buffering:
            self._readable(conn, conn.sock)
        if conn in self.buffering and conn not in self.paused and not conn.registered:
            self._listen(conn)

    def _listen(self, conn: BufferedConn) -> None:
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._readable, conn))
        conn.registered = True

    def _readable(self, conn: BufferedConn, _sock: socket.socket) -> None:
        if self.buffered_bytes >= self.BUFFER_MAX_BYTES and conn is not self._largest():
            self._unlisten(conn)
            self.paused[conn] = None
            return
        try:
            data = conn.sock.recv(self.RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away
            self._forget(conn)
            self.nr_conns -= 1
            util.close(conn.sock)
            return
        conn.buffer += data
        self.buffered_bytes += len(data)
        self._check(conn)

    def _check(self, conn: BufferedConn) -> None:
        assert conn.scanner is not None
        framing = conn.scanner.check(conn.buffer)
        if framing.verdict is Verdict.INCOMPLETE:
            if framing.expects_continue and not conn.sent_continue:
                conn.sent_continue = True
                try:
                    if conn.sock.send(CONTINUE) != len(CONTINUE):
                        raise OSError("partial write")
                except OSError:
                    self._forget(conn)
                    self.nr_conns -= 1
                    util.close(conn.sock)
            return
        if framing.verdict is Verdict.REJECT:
            self._give_up(conn, framing.status, framing.detail)
            return
        # COMPLETE or HAND_OFF: the thread parses the buffer through gunicorn's own parser.
        self._forget(conn)
        data, conn.buffer = bytes(conn.buffer), bytearray()
        conn.close_after = framing.close_after
        conn.data_ready = True  # gthread's handle() must not wait for more data
        conn.init()  # gunicorn's HTTP/1 parser; only plain HTTP reaches here (check_config)
        conn.sock.setblocking(True)
        conn.parser.unreader.unread(data)
        self.submit_whole(conn, data)  # a thread of gthread's pool, or a long poll's

    def _largest(self) -> BufferedConn:
        return max(self.buffering, key=lambda c: len(c.buffer))

    def _unlisten(self, conn: BufferedConn) -> None:
        if conn.registered:
            conn.registered = False
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.poller.unregister(conn.sock)

    def _forget(self, conn: BufferedConn) -> None:
        """Take the connection out of buffering (handed over or closed); wake paused ones."""
        self._unlisten(conn)
        self.paused.pop(conn, None)
        if conn in self.buffering:
            del self.buffering[conn]
            self.buffered_bytes -= len(conn.buffer)
        if not self.paused:
            return
        if self.buffered_bytes < self.BUFFER_MAX_BYTES:
            waking = list(self.paused)
        else:
            waking = [self._largest()] if self._largest() in self.paused else []
        for other in waking:
            del self.paused[other]
            self._listen(other)

    def _give_up(self, conn: BufferedConn, status: int, detail: str) -> None:
        """Answer an error on a request still buffering, and close its connection."""
        self._forget(conn)
        self.nr_conns -= 1
        self.log.debug("closing %s while buffering: %d %s", conn.client, status, detail)
        with contextlib.suppress(OSError):
            conn.sock.send(error_answer(status, detail))
        self.linger(conn.sock)

    # -- deadlines and closing ---------------------------------------------------------------

    def handle_request(self, req: Any, conn: BufferedConn) -> bool:
        # The worker sent `100 Continue` itself, while buffering: don't send a second one.
        if conn.sent_continue:
            req._expected_100_continue = False
        if conn.close_after:  # its body was not read: the next request's start is unknown
            req.force_close()
        return super().handle_request(req, conn)

    def murder_pending(self) -> None:
        """gthread's sweep, plus the buffering deadlines and the lingering closes."""
        super().murder_pending()
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.SWEEP_SECONDS
        if not self.alive and self._stop_by is None:
            self._stop_by = now + self.STOP_SECONDS
        for conn in list(self.buffering):
            assert conn.scanner is not None
            wait = self.REQUEST_SECONDS if conn.scanner.head_done else self.HEAD_SECONDS
            deadline = conn.started + wait
            if self._stop_by is not None:
                deadline = min(deadline, self._stop_by)
            if now >= deadline:
                self._give_up(conn, 408, f"The request did not arrive within {wait:.0f} s.")
        for sock, (deadline, _) in list(self.lingering.items()):
            if now >= deadline:
                self._end_linger(sock)

    def linger(self, sock: socket.socket) -> None:
        """Close after an answer as RFC 9112 9.6 asks, without blocking the poller loop.

        Half-close so the client sees the end of the answer, then read and drop what it still
        sends (so that the kernel does not reset the connection over unread bytes) until it
        closes, LINGER_SECONDS pass or LINGER_MAX_BYTES arrive.
        """
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
            self.poller.register(sock, selectors.EVENT_READ, self._linger_readable)
        except (OSError, ValueError, KeyError):
            util.close(sock)
            return
        self.lingering[sock] = [time.monotonic() + self.LINGER_SECONDS, 0]

    def _linger_readable(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        entry = self.lingering[sock]
        entry[1] += len(data)
        if not data or entry[1] >= self.LINGER_MAX_BYTES:
            self._end_linger(sock)

    def _end_linger(self, sock: socket.socket) -> None:
        self.lingering.pop(sock, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(sock)
        util.close(sock)
