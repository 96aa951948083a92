"""The buffering worker under real gunicorn, over raw sockets: what HTTP/1.1 clients rely on
(keep-alive, pipelining, chunked bodies, 100-continue, 413) still works, and its own bounds."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gunicorn.config import Config
from gunicorn.errors import ConfigError

from mailservice.serving.http_worker import BufferingThreadWorker
from mailservice.testing.smtp_servers import SmtpServer
from tests.conftest import API_KEY, wait_for
from tests.test_durability import message, service_env
from tests.test_gunicorn import GunicornProcess
from tests.tight_worker import TightWorker

MAX_REQUEST_BYTES = 200_000
AUTH = f"Authorization: Bearer {API_KEY}"


def start_service(folder: Path, **extra: str) -> Iterator[GunicornProcess]:
    """One gunicorn worker (so that every connection meets the same one), memory store."""
    smtp = SmtpServer().start()
    env = {
        **service_env(folder, smtp.port, "memory://"),
        "GUNICORN_WORKERS": "1",
        "MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES),
        **extra,
    }
    process = GunicornProcess(folder, env).start()
    yield process
    code, log = process.stop()
    smtp.stop()
    assert code == 0, log


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornProcess]:
    yield from start_service(tmp_path_factory.mktemp("http_worker"))


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornProcess]:
    """The worker with small bounds (tests/tight_worker.py)."""
    args = "--worker-class tests.tight_worker.TightWorker"
    yield from start_service(tmp_path_factory.mktemp("tight"), GUNICORN_CMD_ARGS=args)


def send_body() -> bytes:
    return json.dumps(message(1)).encode()


def post_head(length: int | None, *extra: str, close: bool = True) -> bytes:
    lines = ["POST /send-email HTTP/1.1", "Host: 127.0.0.1", AUTH, "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [*extra, *(["Connection: close"] if close else [])]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def connect(service: GunicornProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", service.port), timeout=5)


def read_to_end(sock: socket.socket) -> bytes:
    """Everything until the server closes (every request here asks it to), 5 s at most."""
    out = b""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        data = sock.recv(65536)
        if not data:
            return out
        out += data
    raise AssertionError(f"the server did not close: {out[:200]!r}")


def _proc_tcp_address(address: tuple[str, int]) -> str:
    """An IPv4 address as /proc/net/tcp writes it: the 32-bit number in host order, in hex."""
    host, port = address
    return f"{socket.inet_aton(host)[::-1].hex().upper()}:{port:04X}"


def unread_by_server(sock: socket.socket) -> int:
    """Bytes this client sent that the server process has not read yet (Linux's
    /proc/net/tcp): what our end has not had acknowledged plus the server end's receive queue.
    0 means the worker has read everything sent so far."""
    ours, theirs = _proc_tcp_address(sock.getsockname()), _proc_tcp_address(sock.getpeername())
    unread = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        tx_queue, rx_queue = (int(n, 16) for n in fields[4].split(":"))
        if (fields[1], fields[2]) == (ours, theirs):
            unread += tx_queue
        elif (fields[1], fields[2]) == (theirs, ours):
            unread += rx_queue
    return unread


def answers(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The final answers in a byte stream of HTTP/1.1 responses (1xx interim ones skipped)."""
    found = []
    while raw:
        head, _, raw = raw.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
        length = int(headers.get("content-length", "0"))
        body, raw = raw[:length], raw[length:]
        status = int(status_line.split()[1])
        if status >= 200:
            found.append((status, headers, body))
    return found


def test_a_kept_alive_connection_serves_request_after_request(service) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=5)
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    try:
        sockets = set()
        for _ in range(3):
            conn.request("POST", "/send-email", send_body(), headers)
            response = conn.getresponse()
            assert response.status == 202, response.read()
            response.read()
            sockets.add(id(conn.sock))
        assert len(sockets) == 1  # never reconnected
    finally:
        conn.close()


def test_pipelined_requests_are_all_answered_in_order(service) -> None:
    first = post_head(len(send_body()), close=False) + send_body()
    second = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    with connect(service) as sock:
        sock.sendall(first + second)
        got = answers(read_to_end(sock))
    assert [status for status, _, _ in got] == [202, 200]


def test_a_body_arriving_in_pieces_is_answered_once_whole(service) -> None:
    body = send_body()
    with connect(service) as sock:
        sock.sendall(post_head(len(body)))
        for start in range(0, len(body), 20):
            # The worker has read all that came before: each piece is a read of its own.
            wait_for(lambda: unread_by_server(sock) == 0)
            sock.sendall(body[start : start + 20])
        [(status, _, answer)] = answers(read_to_end(sock))
    assert status == 202 and json.loads(answer)["request_id"]


def test_a_chunked_body_is_accepted(service) -> None:
    body = send_body()
    pieces = [body[:10], body[10:30], body[30:]]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    with connect(service) as sock:
        sock.sendall(post_head(None, "Transfer-Encoding: chunked"))
        sock.sendall(chunked[:25])
        wait_for(lambda: unread_by_server(sock) == 0)  # the worker has read the first part
        sock.sendall(chunked[25:])
        [(status, _, _)] = answers(read_to_end(sock))
    assert status == 202


def test_expect_100_continue_gets_one_interim_answer_then_the_final_one(service) -> None:
    body = send_body()
    with connect(service) as sock:
        sock.sendall(post_head(len(body), "Expect: 100-continue"))
        interim = sock.recv(100)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        rest = read_to_end(sock)
    assert b"100 Continue" not in rest
    assert [status for status, _, _ in answers(rest)] == [202]


def test_a_body_over_max_request_bytes_is_413_without_being_sent(service) -> None:
    with connect(service) as sock:
        sock.sendall(post_head(MAX_REQUEST_BYTES + 1, close=False))  # and no body at all
        [(status, headers, answer)] = answers(read_to_end(sock))
    assert status == 413
    assert headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close"
    assert json.loads(answer)["status"] == 413


def test_a_head_over_64_kib_is_431(service) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Pad: " + b"p" * 70_000
    with connect(service) as sock:
        # It may answer and close before the last bytes are sent.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head)
        [(status, headers, answer)] = answers(read_to_end(sock))
    assert (status, headers["content-type"]) == (431, "application/problem+json")
    assert json.loads(answer)["status"] == 431


def test_clients_that_never_close_after_an_answer_do_not_stall_the_worker(service) -> None:
    # gunicorn's own close lingers with blocking reads in the loop's thread: 2 s per client.
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    idle = [connect(service) for _ in range(10)]
    try:
        for sock in idle:
            sock.sendall(request)  # and never read, never close
        for _ in range(5):
            with connect(service) as sock:
                sock.sendall(post_head(len(send_body())) + send_body())
                [(status, _, _)] = answers(read_to_end(sock))
                assert status == 202
    finally:
        for sock in idle:
            sock.close()


def test_tls_http2_and_the_proxy_protocol_are_refused_at_start() -> None:
    for name, value in (
        ("certfile", "cert.pem"),
        ("http2_cleartext", "upgrade"),
        ("proxy_protocol", "v1"),
    ):
        cfg = Config()
        cfg.set(name, value)
        with pytest.raises(ConfigError, match="plain HTTP"):
            BufferingThreadWorker.check_config(cfg, None)


def is_open(sock: socket.socket) -> bool:
    """Whether the server has neither answered nor closed this connection yet."""
    sock.setblocking(False)
    try:
        sock.recv(1)
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)
    return False


def test_past_max_buffering_the_connection_waiting_longest_is_closed(tight) -> None:
    partial = b"POST /send-email HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # a head never finished
    waiting = [connect(tight) for _ in range(5)]
    try:
        for sock in waiting:
            sock.sendall(partial)
            wait_for(lambda s=sock: unread_by_server(s) == 0)  # read by the worker in order
        with connect(tight) as newest:
            newest.sendall(partial)
            [(status, _, _)] = answers(read_to_end(waiting[0]))
            assert status == 408
            assert all(is_open(sock) for sock in [*waiting[1:], newest])
    finally:
        for sock in waiting:
            sock.close()
    with connect(tight) as sock:  # and the worker serves as before
        sock.sendall(post_head(len(send_body())) + send_body())
        assert [status for status, _, _ in answers(read_to_end(sock))] == [202]


def test_a_body_that_does_not_arrive_in_time_is_408(tight) -> None:
    with connect(tight) as sock:
        sock.sendall(post_head(len(send_body())) + send_body()[:10])
        [(status, _, answer)] = answers(read_to_end(sock))
    assert status == 408 and json.loads(answer)["status"] == 408


def test_bodies_beyond_the_buffer_budget_wait_their_turn_and_all_arrive(tight) -> None:
    # Three bodies of 190 kB against a 200 kB budget: past it only the largest buffer reads,
    # the others wait on TCP, and each is taken in turn: none is lost, none stalls.
    body = json.dumps({**message(2), "body": "x" * 190_000}).encode()
    socks = [connect(tight) for _ in range(3)]
    try:
        first = post_head(len(body)) + body[:150_000]
        for sock in socks:
            sock.sendall(first)
        # The worker reads what it may and goes over its budget; past it only the largest
        # buffer reads. Every byte sent and not unread has been read.
        wait_for(
            lambda: (
                sum(len(first) - unread_by_server(sock) for sock in socks)
                >= TightWorker.BUFFER_MAX_BYTES
            )
        )
        for sock in socks:
            sock.sendall(body[150_000:])
        statuses = [answers(read_to_end(sock))[0][0] for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    assert statuses == [202, 202, 202]
