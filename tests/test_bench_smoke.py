"""The benchmark's parts work (each a second or two), and its Celery rows run small beside the
thread pool (tens of seconds: gunicorn and Celery workers start); no speed is ever asserted."""

from __future__ import annotations

import cProfile
import json
import smtplib
import time
from pathlib import Path

import pytest
import redis

from bench.celery_rows import with_thread_row
from bench.counters import RedisCounter
from bench.load import lua_script, percentile
from bench.profiles import summarize
from bench.report import RowResult, format_markdown, format_table
from bench.run import Bench, parse_args
from bench.sampler import CpuSampler
from bench.sink import SinkProcess
from bench.workload import API_KEY, SEND_PATH, WORKLOADS, body_bytes
from mailservice.testing.ports import free_port
from mailservice.testing.rabbitmq import list_vhosts, require_rabbitmq
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


def test_a_celery_row_brings_the_thread_pool_row_on_its_store_along() -> None:
    assert with_thread_row(["plain-memory", "celery-redis-2"]) == [
        "plain-memory", "gunicorn-redis", "celery-redis-2",
    ]  # fmt: skip
    assert with_thread_row(["celery-redis-1", "gunicorn-redis"]) == [
        "celery-redis-1", "gunicorn-redis",
    ]  # fmt: skip
    assert with_thread_row(["gunicorn-memory"]) == ["gunicorn-memory"]


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


def test_profile_summary_gives_the_costliest_functions_per_message(tmp_path: Path) -> None:
    def costly() -> int:
        return sum(n * n for n in range(20000))

    profile = cProfile.Profile()
    profile.enable()
    for _ in range(5):
        costly()
    profile.disable()
    profile.dump_stats(str(tmp_path / "child-1.pstats"))
    summary = summarize(tmp_path, messages=5)
    assert set(summary) == {"child"} and summary["child"]["processes"] == 1
    top = next(r for r in summary["child"]["by_total"] if "costly" in r["function"])
    assert top["calls_per_msg"] == 1.0 and top["total_us_per_msg"] > 0


def test_cpu_samples_charge_the_busy_function(tmp_path: Path) -> None:
    def spin(seconds: float) -> None:
        end = time.process_time() + seconds
        while time.process_time() < end:
            pass

    sampler = CpuSampler().start()
    try:
        spin(0.3)
    finally:
        sampler.stop()
    sampler.dump(tmp_path / "main-1.samples.json")
    assert sampler.samples > 0 and sampler.cpu_seconds >= 0.3
    summary = summarize(tmp_path, messages=1)["main"]
    assert summary["kind"] == "cpu samples"
    busy = next(r for r in summary["by_own"] if "spin" in r["function"])
    assert busy["own_us_per_msg"] > 0.5 * 0.3e6  # most of the CPU, whatever the tick


def run_small(tmp_path: Path, rows: str) -> dict[str, RowResult]:
    """A bench run of `rows` with 40 messages from the Python client; its rows by name."""
    args = parse_args(
        ["--rows", rows, "--messages", "40", "--concurrency", "4", "--generator", "python",
         "--wait", "60", "--out", str(tmp_path / "results")]
    )  # fmt: skip
    bench = Bench(args, tmp_path)
    try:
        found, _ = bench.run()
    finally:
        bench.close()
    return {row.name: row for row in found if isinstance(row, RowResult)}


def assert_celery_row_beside_the_thread_pool(rows: dict[str, RowResult], name: str) -> RowResult:
    thread, celery = rows["gunicorn-redis"], rows[name]
    for row in (thread, celery):
        assert (row.accepted, row.delivered, row.notes) == (40, 40, [])
    assert thread.delivered_per_s and celery.delivered_per_s
    assert celery.vs_thread == pytest.approx(celery.delivered_per_s / thread.delivered_per_s)
    assert celery.cpu_us_per_msg and celery.details["worker_children_cpu_us_per_msg"] > 0
    assert celery.broker_rt_per_msg and celery.broker_rt_per_msg > 1  # a publish, a fetch, ...
    assert celery.details["store"]["round_trips_per_msg"] > 1
    return celery


@pytest.mark.redis
def test_celery_rows_run_small_on_a_redis_broker(tmp_path: Path) -> None:
    rows = run_small(tmp_path, "celery-redis-1")
    assert list(rows) == ["ceiling (smtplib x8)", "gunicorn-redis", "celery-redis-1"]
    celery = assert_celery_row_beside_the_thread_pool(rows, "celery-redis-1")
    assert celery.details["layout"] == "prefork" and celery.details["worker_processes"] == 1
    # Each task is pushed on the broker once and fetched once.
    by_name = celery.details["broker_counts"]["commands_by_name_per_msg"]
    assert by_name["lpush"] >= 1.0 and by_name["brpop"] >= 1.0


@pytest.mark.redis
@pytest.mark.rabbitmq
def test_the_celery_row_runs_small_on_rabbitmq_in_a_vhost_it_deletes(tmp_path: Path) -> None:
    require_rabbitmq()
    rows = run_small(tmp_path, "celery-rabbitmq-2")
    celery = assert_celery_row_beside_the_thread_pool(rows, "celery-rabbitmq-2")
    assert celery.details["broker_counts"]["connections"] >= 2  # the API's and the worker's
    assert celery.details["vhost"].startswith("mailtest-")
    assert celery.details["vhost"] not in list_vhosts()


def test_smtp_in_row_submits_over_reused_connections_and_counts_deliveries(tmp_path) -> None:
    from bench.smtp_in_rows import smtp_in_row
    from bench.workload import write_senders_file

    args = parse_args(["--rows", "smtp-in", "--messages", "8", "--concurrency", "1",
                       "--smtp-connections", "2"])  # fmt: skip
    sink = SinkProcess(free_port()).start()
    try:
        senders = write_senders_file(tmp_path / "data.csv", sink.port)
        env = {"SENDERS_FILE": str(senders), "SMTP_SECURITY": "none", "RATE_LIMIT": "",
               "STATUS_STORE_URL": "memory://", "EMAIL_LOG": str(tmp_path / "log.txt"),
               "DRAIN_SECONDS": "5"}  # fmt: skip
        row = smtp_in_row(args, sink, env, tmp_path)
    finally:
        sink.stop()
    assert (row.accepted, row.delivered) == (8, 8)
    assert row.accepted_per_s and row.delivered_per_s and not row.notes
