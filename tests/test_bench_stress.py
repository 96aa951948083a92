"""The bench's stress-row parts work (a second or two); no speed is ever asserted here."""

from __future__ import annotations

import json
import socket
import threading

from bench.report import (
    BigMessagesResult,
    RowResult,
    SlowClientsResult,
    format_markdown,
    format_table,
)
from bench.slow_clients import Dribblers, head_payload
from bench.stress_rows import big_body
from bench.workload import API_KEY, SEND_PATH
from tests.conftest import wait_for
from tests.test_bench_smoke import FAKE_META


def test_a_big_body_is_a_send_of_the_asked_size() -> None:
    body = big_body(0.5)
    payload = json.loads(body)
    assert abs(len(payload["body"]) - 512 * 1024) < 100
    assert set(payload) == {"recipient", "subject", "body"}


def test_dribblers_send_a_byte_at_a_time_and_reopen_what_the_server_closes() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(5)
        port = server.getsockname()[1]
        dribblers = Dribblers(port, 3, 0.02, head_payload("127.0.0.1", API_KEY, SEND_PATH))
        accepted: list[socket.socket] = []

        def accept() -> None:
            for _ in range(4):
                accepted.append(server.accept()[0])

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        dribblers.start()
        try:
            assert dribblers.wait_open(5)
            wait_for(lambda: len(accepted) >= 3, timeout=5)
            wait_for(lambda: dribblers.snapshot().bytes_sent >= 15, timeout=5)
            received = accepted[0].recv(100)
            assert 1 <= len(received) <= 10  # a few bytes, not the request
            accepted[0].close()  # the server gives up on one: it is opened again
            wait_for(lambda: dribblers.snapshot().closed_by_server == 1, timeout=5)
            wait_for(lambda: len(accepted) == 4, timeout=5)
        finally:
            stats = dribblers.stop()
            for sock in accepted:
                sock.close()
        assert stats.opened == 4 and stats.finished == 0


def test_stress_rows_get_tables_of_their_own_and_flag_slow_calls() -> None:
    throughput = RowResult("gunicorn-memory", 10, accepted=10, delivered=10)
    fast = SlowClientsResult("slow-clients-gunicorn", 100, calls=20, answered=20, accepted=10)
    fast.delivered, fast.send_p99_ms, fast.read_p99_ms = 10, 4.2, 2.1
    slow = SlowClientsResult("slow-clients-gthread", 100, calls=2, answered=1, accepted=1)
    slow.delivered, slow.send_p99_ms = 1, 10_000.0
    big = BigMessagesResult("big-messages-memory", 10, 4.0, accepted=10)
    big.rss_before_mb, big.rss_after_mb = 50.0, 130.0
    table = format_table([throughput, fast, slow, big])
    assert table.count("\n\n") == 2  # three tables
    assert "slow-clients row" in table and "big-messages row" in table
    assert "20/20" in table and "1/2" in table
    assert "!! slow-clients-gthread: 1 normal call(s) failed" in table
    assert "!! slow-clients-gthread: p99 10,000 ms is not under 1 s" in table
    assert "slow-clients-gunicorn:" not in table  # nothing to flag
    assert big.queued_mb == 40.0 and big.rss_per_queued_mb == 2.0
    markdown = format_markdown([throughput, fast, slow, big], FAKE_META)
    assert "| big-messages-memory | 10 | 4.00 | 10 | 0 | 40.0 | 50.0 | 130 | - | 2.00 |" in markdown
