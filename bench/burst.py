"""One measured burst of a throughput row, whatever runs the service: readings before, the
burst, the wait for the sink, readings after, and the row's figures from them.

The thread-pool rows (bench/run.py) and the Celery rows (bench/celery_rows.py) share it: what
differs is which processes are the service's (`pids`: gunicorn's, or gunicorn's and the Celery
workers') and which other servers are read (`probes`, bench/counters.py: a redis-server's CPU
and round trips, a RabbitMQ vhost's). Probes begin just before the burst and end once the sink
has every message, before any further burst; their answers go into the row's JSON by name.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping

from bench.counters import Probe
from bench.load import LoadResult
from bench.measure import per_message, per_second, wait_for_sink
from bench.report import RowResult
from bench.services import cpu_seconds, memory_kb
from bench.sink import SinkProcess, SinkStats


def measure(
    row: RowResult,
    args: argparse.Namespace,
    sink: SinkProcess,
    fire: Callable[[], LoadResult],
    per_request: int,
    pids: Callable[[], list[int]],
    probes: Mapping[str, Probe],
) -> None:
    """Fire `args.bursts` bursts; fill `row` from the first (and the RSS after each).
    RuntimeError from the load generator goes to the caller, which stops the service."""
    pids_before = pids()
    for probe in probes.values():
        probe.begin()
    cpu_before = cpu_seconds(pids_before)
    rss_before = memory_kb(pids_before, "VmRSS")
    sink_cpu_before = cpu_seconds(sink.pids())
    load = fire()
    accepted = load.accepted * per_request
    stats = wait_for_sink(sink, accepted, args.wait, args.stall)
    pids_after = pids()
    cpu = cpu_seconds(pids_after) - cpu_before
    sink_cpu = cpu_seconds(sink.pids()) - sink_cpu_before
    peak_kb = memory_kb(pids_after, "VmHWM")
    rss_after = memory_kb(pids_after, "VmRSS")
    measured = {name: probe.end(accepted) for name, probe in probes.items()}
    # Further bursts on the same processes: memory must come back to the same level once each
    # is drained (bounded by QUEUE_MAX, no growth per message).
    rss_after_each = [rss_after / 1024]
    for _ in range(args.bursts - 1):
        sink.reset()
        more = fire()
        wait_for_sink(sink, more.accepted * per_request, args.wait, args.stall)
        rss_after_each.append(memory_kb(pids(), "VmRSS") / 1024)
    fill(row, load, stats, per_request)
    row.peak_rss_mb = peak_kb / 1024
    row.cpu_us_per_msg = per_message(cpu, accepted)
    if sorted(pids_after) != sorted(pids_before):
        row.notes.append("the set of service processes changed during the run (a restart?)")
    row.details.update(
        processes=len(pids_after),
        rss_before_mb=rss_before / 1024,
        rss_after_mb=rss_after / 1024,
        rss_after_each_burst_mb=rss_after_each,
        sink_cpu_us_per_msg=per_message(sink_cpu, stats.messages),
        **measured,
    )
    if len(rss_after_each) > 1:
        shown = ", ".join(f"{mb:.0f}" for mb in rss_after_each)
        row.notes.append(f"RSS after each of {len(rss_after_each)} bursts: {shown} MB")


def fill(row: RowResult, load: LoadResult, stats: SinkStats, per_request: int) -> None:
    """The row's figures; `accepted` counts messages (a batch's 202 accepts 100)."""
    row.accepted = load.accepted * per_request
    row.accepted_per_s = load.accepted_per_s and load.accepted_per_s * per_request
    row.p50_ms, row.p99_ms = load.p50_ms, load.p99_ms
    row.delivered = stats.messages
    row.delivered_per_s = per_second(stats.messages, load.first_202, stats.last_message)
    row.smtp_sessions = stats.sessions
    other = {code: n for code, n in load.statuses.items() if code != "202"}
    if other:
        row.notes.append(f"answers other than 202: {other}")
    if load.errors:
        row.notes.append(f"load generator errors: {load.errors}")
    row.notes.extend(load.notes)
    row.details = {
        "generator": load.generator,
        "statuses": load.statuses,
        "max_ms": load.max_ms,
        "first_request": load.first_request,
        "first_202": load.first_202,
        "last_response": load.last_response,
        "sink": {"first_message": stats.first_message, "last_message": stats.last_message},
    }
