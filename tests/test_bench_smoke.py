"""The benchmark's parts work (a second or two); no speed is ever asserted here."""

from __future__ import annotations

import json
import smtplib
from pathlib import Path

import pytest
import redis

from bench.counters import RedisCounter
from bench.load import lua_script, percentile
from bench.report import RowResult, format_markdown, format_table
from bench.sink import SinkProcess
from bench.workload import API_KEY, SEND_PATH, WORKLOADS, body_bytes
from mailservice.testing.ports import free_port
from mailservice.testing.redis_server import RedisServer
from tests.conftest import API_KEY as TEST_KEY

# What a run's summary is headed with; the same fake run for every report test.
FAKE_META = {
    "date": "2026-01-01T00:00:00+00:00",
    "cpu_count": 2,
    "loadavg_before": "0.00 0.00 0.00",
    "generator": "fake",
    "messages": 10,
    "concurrency": 2,
    "workers": 8,
    "gunicorn_workers": 2,
}


def test_sink_counts_messages_and_sessions_then_resets() -> None:
    sink = SinkProcess(free_port()).start()
    try:
        with smtplib.SMTP("127.0.0.1", sink.port, timeout=10) as conn:
            for n in range(3):
                conn.sendmail("a@example.com", ["b@example.com"], f"Subject: {n}\r\n\r\nhi\r\n")
        stats = sink.stats()
        assert (stats.messages, stats.sessions) == (3, 1)
        assert stats.first_message is not None and stats.last_message is not None
        assert stats.first_message <= stats.last_message
        sink.reset()
        assert sink.stats().messages == 0
    finally:
        sink.stop()


def test_wrk_script_posts_the_body_with_a_bearer_key_and_bounds_the_count() -> None:
    script = lua_script(body_bytes(), API_KEY, SEND_PATH)
    for part in ("function init(", "function request(", "function delay(", "function response("):
        assert part in script
    assert "function done(summary, latency, requests)" in script
    assert f'wrk.headers["Authorization"] = "Bearer {API_KEY}"' in script
    assert f'wrk.path = "{SEND_PATH}"' in script
    body = script.split("wrk.body = [==[", 1)[1].split("]==]", 1)[0]
    assert json.loads(body)["recipient"]
    top_level_ends = [line for line in script.splitlines() if line == "end"]
    assert script.count("function ") == len(top_level_ends)  # every function is closed


def test_table_and_markdown_show_figures_and_flag_a_shortfall() -> None:
    full = RowResult("gunicorn-memory", 10, accepted=10, delivered=10, accepted_per_s=1234.5)
    full.p99_ms, full.cpu_us_per_msg = 12.345, 987.0
    short = RowResult("plain-redis", 10, accepted=10, delivered=7, notes=["a note"])
    table = format_table([full, short])
    header, rule, first, second, *notes = table.splitlines()
    assert len(header) == len(rule) == len(first) == len(second)
    assert "1,234" in first and "12.3" in first and "10/10" in first
    assert "7/10 SHORT" in second
    assert notes[0].startswith("!! plain-redis: 3 accepted")
    markdown = format_markdown([full, short], FAKE_META)
    assert "2 cores" in markdown and "| gunicorn-memory |" in markdown
    assert "**plain-redis: 3 accepted message(s) never reached the sink**" in markdown


def test_percentile_is_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([], 50) is None


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_every_bench_workload_is_accepted_whole_by_the_service(client, smtp_server, name) -> None:
    """A bench row whose body the service refused would measure 4xx answers, not sending."""
    workload = WORKLOADS[name]
    answer = client.post(
        workload.path,
        data=workload.body_bytes(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TEST_KEY}"},
    )
    assert answer.status_code == 202, answer.get_json()
    accepted = answer.get_json().get("messages", [answer.get_json()])
    assert len(accepted) == workload.messages_per_request
    assert all(item.get("request_id") for item in accepted)


@pytest.mark.redis
def test_redis_counter_counts_round_trips_and_commands_per_message(tmp_path: Path) -> None:
    server = RedisServer(tmp_path).start()
    client = redis.Redis(port=server.port)
    try:
        client.ping()  # connected before the count begins
        counter = RedisCounter(server.port)
        counter.begin()
        for n in range(100):
            client.set(f"k{n}", "v")  # one round trip
            client.pipeline().incrby("n", 1).incrby("n", 2).execute()  # MULTI ... EXEC: one
        figures = counter.end(100)
    finally:
        client.close()
        server.stop()
    by_name = figures["commands_by_name_per_msg"]
    assert (by_name["set"], by_name["incrby"], by_name["multi"], by_name["exec"]) == (1, 2, 1, 1)
    assert figures["commands_per_msg"] >= 5.0
    # Two a message, and the counter's own few (its INFO calls) spread over 100 messages.
    assert 2.0 <= figures["round_trips_per_msg"] <= 2.1
