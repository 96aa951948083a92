"""A real webhook receiver for tests: http.server's ThreadingHTTPServer on a free loopback port.

`WebhookReceiver(secret, answers=[500, 500])` answers each POST from its script first, then
200 (`then`), and records every request as a `Hit`: its path, headers, raw body, the status it
answered, the client's port (one per connection), and whether its signature and timestamp
check out (`verify()`, the check a receiver makes, as the README shows it). `gate` (a
threading.Event), when given, holds every answer until it is set, so that a test can look at
the sender while a try is under way. `drip` (seconds) sends every answer one byte at a time,
that long apart, with a body long enough to last for hours: the receiver that keeps a try
going while never letting one read time out; `dripping` counts the answers still going (one
ends when its client goes away). `tls` (a certificate and key file) serves HTTPS.
`SilentServer` (smtp_servers) is the receiver that never answers.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

TOLERANCE = 300  # seconds a timestamp may be off: older is a replay
DRIP_BODY = 100_000  # bytes of padding before a dripped answer's JSON


def verify(secret: str, headers: dict[str, str], body: bytes, now: float | None = None) -> bool:
    """Whether `X-Mail-Signature` signs `<X-Mail-Timestamp>.<body>` under `secret`, and the
    timestamp is within TOLERANCE of `now`."""
    timestamp = headers.get("X-Mail-Timestamp", "")
    if not timestamp.isdigit() or abs((now or time.time()) - int(timestamp)) > TOLERANCE:
        return False
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return hmac.compare_digest(headers.get("X-Mail-Signature", ""), "v1=" + mac.hexdigest())


@dataclass
class Hit:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what it answered
    signed: bool  # verify() held
    peer_port: int  # the client's end of the connection: one port, one connection

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver:
    """Records POSTs; answers from `answers` first, then `then`. Start it, stop it."""

    def __init__(
        self,
        secret: str,
        answers: list[int] | None = None,
        then: int = 200,
        gate: threading.Event | None = None,
        tls: tuple[Path, Path] | None = None,
        headers: dict[str, str] | None = None,
        drip: float | None = None,
    ) -> None:
        self.secret = secret
        self.answers: deque[int] = deque(answers or [])
        self.then = then
        self.gate = gate
        self.extra_headers = headers or {}  # sent with every answer (a redirect's Location)
        self.drip = drip
        self.dripping = 0
        self._stopping = threading.Event()
        self.hits: list[Hit] = []
        self.arrived = 0  # requests read, answered or not yet
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str = "/hooks/mail", host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def answered(self, status: int) -> list[Hit]:
        with self._lock:
            return [hit for hit in self.hits if hit.status == status]

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self.gate is not None:
            self.gate.set()
        self.server.shutdown()
        self.server.server_close()

    def _next_status(self) -> int:
        with self._lock:
            self.arrived += 1
            return self.answers.popleft() if self.answers else self.then

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real receivers do
            # Headers and body go out in two writes: with Nagle on, the body waited for the
            # client's delayed ACK, 40 ms an answer.
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = dict(self.headers.items())
                status = receiver._next_status()
                if receiver.gate is not None:
                    receiver.gate.wait(30)
                signed = verify(receiver.secret, headers, body)
                hit = Hit(self.path, headers, body, status, signed, self.client_address[1])
                with receiver._lock:
                    receiver.hits.append(hit)
                answer = b'{"ok": true}' if status < 300 else b'{"error": "scripted"}'
                if receiver.drip is not None:
                    self._drip(status, b" " * DRIP_BODY + answer)
                    return
                self.send_response(status)
                for name, value in receiver.extra_headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def _drip(self, status: int, answer: bytes) -> None:
                head = (
                    f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(answer)}\r\n\r\n"
                ).encode()
                with receiver._lock:
                    receiver.dripping += 1
                try:
                    for byte in head + answer:
                        if receiver._stopping.wait(receiver.drip):
                            break
                        self.wfile.write(bytes((byte,)))
                except OSError:  # the client went away (as it should, at its time-out)
                    pass
                finally:
                    self.close_connection = True
                    with receiver._lock:
                        receiver.dripping -= 1

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the test's output stays the test's

        return Handler
