"""Slow HTTP clients, and the normal calls measured while they hold their connections.

`Dribblers` keeps `count` connections open to the service from one thread, each sending one byte
every `interval` seconds: in "head" mode a request head that never ends (a slowloris), in
"body" mode a complete head and then its body. A connection the server closes or answers is
counted and opened again on the next round, so the pressure lasts as long as the run; every
round is bounded by `interval` and the whole run by `stop()` or `max_seconds`.

`normal_calls()` makes `pairs` sequential (send, status read) pairs, each call on a connection
of its own with a client timeout, and keeps every latency and every failure: what a normal
client sees meanwhile. Both talk only to the host and port they are given (127.0.0.1 here).
"""

from __future__ import annotations

import errno
import http.client
import json
import socket
import threading
import time
from dataclasses import dataclass, field

from bench.load import percentile

# Header lines the head-mode dribbler sends after its request line, one byte at a time; far
# more than any run reaches at one byte per interval, so the head is never finished.
FILLER_LINES = 5000


def head_payload(host: str, key: str, path: str) -> bytes:
    """A POST whose head never ends: request line, real headers, then filler header lines."""
    start = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        "Content-Type: application/json\r\n"
    )
    filler = "".join(f"X-Slow-{n}: {n}\r\n" for n in range(FILLER_LINES))
    return (start + filler).encode()


def body_payload(host: str, key: str, path: str, body: bytes) -> tuple[bytes, bytes]:
    """A complete POST head, sent at once, and its body, sent a byte at a time."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode(), body


@dataclass(slots=True)
class DribbleStats:
    """What the dribblers saw: connections opened, closed or answered by the server."""

    opened: int = 0
    connect_errors: int = 0
    closed_by_server: int = 0
    answered_by_server: int = 0
    finished: int = 0
    bytes_sent: int = 0
    open_now: int = 0


class _Slot:
    """One slow connection: its socket and how far into its payload it is."""

    __slots__ = ("pos", "sock")

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.pos = 0


class Dribblers:
    """`count` connections that each send one byte every `interval` seconds."""

    def __init__(
        self,
        port: int,
        count: int,
        interval: float,
        payload: bytes,
        first: bytes = b"",
        host: str = "127.0.0.1",
        max_seconds: float = 300.0,
    ) -> None:
        self.address = (host, port)
        self.count = count
        self.interval = interval
        self.payload = payload
        self.first = first  # sent at once on connecting (body mode's complete head)
        self.max_seconds = max_seconds
        self.stats = DribbleStats()
        self._slots = [_Slot() for _ in range(count)]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="dribblers", daemon=True)

    def start(self) -> Dribblers:
        self._thread.start()
        return self

    def snapshot(self) -> DribbleStats:
        with self._lock:
            return DribbleStats(
                **{name: getattr(self.stats, name) for name in self.stats.__slots__}
            )

    def wait_open(self, timeout: float) -> bool:
        """Whether every connection was opened (at least once) within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.snapshot().opened >= self.count:
                return True
            time.sleep(0.02)
        return False

    def stop(self) -> DribbleStats:
        self._stop.set()
        self._thread.join(self.interval + 10)
        for slot in self._slots:
            if slot.sock is not None:
                slot.sock.close()
                slot.sock = None
        return self.snapshot()

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            round_start = time.monotonic()
            for slot in self._slots:
                if self._stop.is_set():
                    break
                self._step(slot)
            with self._lock:
                self.stats.open_now = sum(slot.sock is not None for slot in self._slots)
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - round_start)))

    def _step(self, slot: _Slot) -> None:
        """Open the slot's connection if needed, notice the server ending it, send one byte."""
        if slot.sock is None:
            self._open(slot)
            return
        try:
            seen = slot.sock.recv(4096)
        except BlockingIOError:
            seen = None
        except OSError:
            seen = b""
        if seen is not None:  # the server answered (e.g. 408) or closed: start again
            with self._lock:
                if seen:
                    self.stats.answered_by_server += 1
                else:
                    self.stats.closed_by_server += 1
            self._close(slot)
            return
        try:
            sent = slot.sock.send(self.payload[slot.pos : slot.pos + 1])
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                raise
            with self._lock:
                self.stats.closed_by_server += 1
            self._close(slot)
            return
        slot.pos += sent
        with self._lock:
            self.stats.bytes_sent += sent
        if slot.pos >= len(self.payload):
            with self._lock:
                self.stats.finished += 1
            self._close(slot)

    def _open(self, slot: _Slot) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(2.0)
        try:
            sock.connect(self.address)
            if self.first:
                sock.sendall(self.first)
        except OSError:
            sock.close()
            with self._lock:
                self.stats.connect_errors += 1
            return
        sock.setblocking(False)
        slot.sock, slot.pos = sock, 0
        with self._lock:
            self.stats.opened += 1

    @staticmethod
    def _close(slot: _Slot) -> None:
        if slot.sock is not None:
            slot.sock.close()
        slot.sock = None


@dataclass(slots=True)
class CallsResult:
    """Normal calls made under the slow clients: latencies of the good answers, failures."""

    pairs: int
    made: int = 0  # calls made: sends, and status reads after a good send
    stopped_at_limit: bool = False  # max_seconds ran out before every pair was made
    send_ms: list[float] = field(default_factory=list)
    read_ms: list[float] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    first_failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return len(self.send_ms) + len(self.read_ms)

    def fail(self, kind: str, detail: str) -> None:
        self.failures[kind] = self.failures.get(kind, 0) + 1
        if len(self.first_failures) < 5:
            self.first_failures.append(f"{kind}: {detail}")

    def summary(self) -> dict[str, float | None]:
        """p50, p99 and max in ms of the sends and of the status reads."""
        sends, reads = sorted(self.send_ms), sorted(self.read_ms)
        return {
            "send_p50_ms": percentile(sends, 50),
            "send_p99_ms": percentile(sends, 99),
            "read_p50_ms": percentile(reads, 50),
            "read_p99_ms": percentile(reads, 99),
            "max_ms": max(sends + reads) if sends or reads else None,
        }


def _call(
    port: int, method: str, path: str, body: bytes | None, key: str, timeout: float
) -> tuple[int, dict, float]:
    """One request on a connection of its own: (status, JSON answer, milliseconds)."""
    headers = {"Authorization": f"Bearer {key}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    start = time.perf_counter()
    try:
        conn.request(method, path, body, headers)
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    elapsed = (time.perf_counter() - start) * 1000
    return response.status, json.loads(raw) if raw else {}, elapsed


def normal_calls(
    port: int,
    key: str,
    send_path: str,
    body: bytes,
    pairs: int,
    timeout: float,
    pace: float = 0.0,
    max_seconds: float = 120.0,
) -> CallsResult:
    """`pairs` (POST send, GET its status) pairs in sequence, `pace` seconds apart at most."""
    result = CallsResult(pairs)
    deadline = time.monotonic() + max_seconds
    for _ in range(pairs):
        if time.monotonic() > deadline:
            result.stopped_at_limit = True
            break
        started = time.monotonic()
        result.made += 1
        try:
            status, answer, ms = _call(port, "POST", send_path, body, key, timeout)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            result.fail("send error", repr(exc))
            continue
        request_id = answer.get("request_id")
        if status != 202 or not isinstance(request_id, str):
            result.fail(f"send {status}", str(answer)[:200])
            continue
        result.send_ms.append(ms)
        result.request_ids.append(request_id)
        result.made += 1
        try:
            status, answer, ms = _call(
                port, "GET", f"/email-status/{request_id}", None, key, timeout
            )
        except (OSError, http.client.HTTPException, ValueError) as exc:
            result.fail("status error", repr(exc))
            continue
        if status != 200 or answer.get("request_id") != request_id:
            result.fail(f"status {status}", str(answer)[:200])
            continue
        result.read_ms.append(ms)
        time.sleep(max(0.0, pace - (time.monotonic() - started)))
    return result
