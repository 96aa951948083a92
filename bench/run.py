"""`make bench`: the service under a bounded burst, row by row, against the in-run SMTP ceiling.

For each row the bench starts the service as production runs it (gunicorn with the app factory,
or `python mail_server.py`) with the memory or the Redis store, fires `--messages` sends at
`--concurrency` from wrk (or the Python client when wrk is missing), waits (with a deadline) for
the counting sink to receive every accepted message, reads CPU time and peak RSS from /proc,
and stops the service. The first row is the ceiling: plain smtplib, same messages, no HTTP,
no store. Then the stress rows (bench/stress_rows.py): normal calls while 100 clients send a
byte at a time (slow-clients-*), and memory per MB of big messages queued while SMTP is down
(big-messages-*). Every process it starts listens on 127.0.0.1 only and is stopped on the way
out.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import longpoll_rows, stress_rows
from bench.ceiling import run_ceiling
from bench.load import LoadResult, lua_script, run_python, run_wrk
from bench.measure import per_message, per_second, wait_for_sink
from bench.report import Row, RowResult, format_table, write_results
from bench.services import cpu_seconds, memory_kb, start_settled
from bench.sink import SinkProcess, SinkStats
from bench.workload import API_KEY, WORKLOADS, write_senders_file
from mailservice.testing.ports import free_port
from mailservice.testing.redis_server import RedisServer, find_redis_binary
from mailservice.testing.service_process import ROOT, ServiceProcess

THROUGHPUT_ROWS = ("gunicorn-memory", "gunicorn-redis", "plain-memory", "plain-redis")
# gunicorn-memory with other content (bench/workload.py); /plain compares each with
# gunicorn-memory of the same run. A batch row's --messages are sent 100 to a request.
CONTENT_ROWS = ("gunicorn-memory-templated", "gunicorn-memory-attachment", "gunicorn-memory-batch")
PLAIN_ROW = "gunicorn-memory"
ROWS = (*THROUGHPUT_ROWS, *CONTENT_ROWS, *stress_rows.SLOW_ROWS, *stress_rows.BIG_ROWS)
ROWS += longpoll_rows.ROWS  # one gunicorn worker, with and without 200 long polls
# slow-clients-gthread (stock gthread, the worker class before http_worker.py) is for a
# comparison on request: its normal calls time out, which takes the whole --slow-seconds.
DEFAULT_ROWS = tuple(name for name in ROWS if name != "slow-clients-gthread")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--messages", type=int, default=5000, help="sends per row (5000)")
    parser.add_argument("--concurrency", type=int, default=32, help="open connections (32)")
    parser.add_argument(
        "--rows",
        default=",".join(DEFAULT_ROWS),
        help=f"comma-separated, of {', '.join(ROWS)} (all but slow-clients-gthread)",
    )
    parser.add_argument("--workers", type=int, default=8, help="WORKERS sending threads (8)")
    parser.add_argument("--gunicorn-workers", type=int, default=2, help="GUNICORN_WORKERS (2)")
    parser.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk -t (1: 2 cores only)")
    parser.add_argument("--max-seconds", type=float, default=120, help="bound of one burst (s)")
    parser.add_argument("--wait", type=float, default=120, help="deadline for the sink (s)")
    parser.add_argument("--stall", type=float, default=30, help="give up after no progress (s)")
    parser.add_argument(
        "--memory-url", default="memory://", help="STATUS_STORE_URL of memory rows (memory://)"
    )
    parser.add_argument(
        "--bursts", type=int, default=1, help="bursts per row; RSS is kept after each (1)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    stress_rows.add_arguments(parser)
    longpoll_rows.add_arguments(parser)
    args = parser.parse_args(argv)
    args.rows = [name.strip() for name in args.rows.split(",") if name.strip()]
    unknown = [name for name in args.rows if name not in ROWS]
    if unknown:
        parser.error(f"unknown row(s) {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    if args.messages < args.concurrency or args.concurrency < 1 or args.workers < 1:
        parser.error("--messages must be at least --concurrency, and both positive")
    if args.concurrency % args.wrk_threads:
        parser.error("--concurrency must be a multiple of --wrk-threads")
    return args


def ceiling_row(args: argparse.Namespace, sink: SinkProcess) -> RowResult:
    sink.reset()
    sink_cpu = cpu_seconds(sink.pids())
    figures = run_ceiling(sink.port, args.messages, args.workers, args.max_seconds + 60)
    stats = wait_for_sink(sink, figures["sent"], args.wait, args.stall)
    sink_cpu = cpu_seconds(sink.pids()) - sink_cpu
    row = RowResult(f"ceiling (smtplib x{args.workers})", args.messages)
    row.delivered = stats.messages
    row.delivered_per_s = per_second(stats.messages, figures["start"], stats.last_message)
    row.vs_ceiling = 1.0
    row.smtp_sessions = stats.sessions
    row.peak_rss_mb = figures["peak_rss_kb"] / 1024
    row.cpu_us_per_msg = per_message(figures["cpu_seconds"], figures["sent"])
    row.notes.extend(f"send failed: {failure}" for failure in figures["failures"])
    row.details = {
        "ceiling": figures,
        "sink_last_message": stats.last_message,
        "sink_cpu_us_per_msg": per_message(sink_cpu, stats.messages),
    }
    return row


def row_vs_plain(row: Row, rows: list[Row]) -> None:
    """A content row's delivered/s against gunicorn-memory's of the same run, if it ran."""
    plain = next((r for r in rows if r.name == PLAIN_ROW), None)
    if row.name not in CONTENT_ROWS or not isinstance(row, RowResult):
        return
    if isinstance(plain, RowResult) and row.delivered_per_s and plain.delivered_per_s:
        row.vs_plain = row.delivered_per_s / plain.delivered_per_s


class Bench:
    """One run: the sink, Redis when a row needs it, the rows in order."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.sink = SinkProcess(free_port())
        self.redis: RedisServer | None = None
        self.senders_file = workdir / "data.csv"
        self.wrk = shutil.which("wrk") if args.generator != "python" else None
        if args.generator == "wrk" and self.wrk is None:
            raise SystemExit("bench: --generator wrk, but wrk is missing (apt-get install wrk)")

    def fire(self, service: ServiceProcess, workload: str) -> LoadResult:
        """One burst of the workload: --messages messages, so fewer requests for a batch."""
        args, load = self.args, WORKLOADS[workload]
        requests = max(1, args.messages // load.messages_per_request)
        concurrency = min(args.concurrency, requests)
        if self.wrk is not None:
            threads = args.wrk_threads if concurrency % args.wrk_threads == 0 else 1
            script = self.workdir / f"send-{workload}.lua"
            if not script.exists():
                script.write_text(
                    lua_script(load.body_bytes(), API_KEY, load.path), encoding="utf-8"
                )
            return run_wrk(
                self.wrk, service.base + load.path, script, requests, concurrency,
                threads, args.max_seconds,
            )  # fmt: skip
        return run_python(
            "127.0.0.1", service.port, load.path, load.body_bytes(), API_KEY,
            requests, concurrency, args.max_seconds,
        )  # fmt: skip

    def service_row(self, name: str) -> RowResult:
        args = self.args
        kind, store, *rest = name.split("-")
        workload = rest[0] if rest else "plain"
        per_request = WORKLOADS[workload].messages_per_request
        row = RowResult(name, args.messages, accepted=0)
        if store == "redis":
            if self.redis is None:
                row.notes.append("skipped: redis-server is not installed")
                return row
            self.redis.flush()
        rowdir = self.workdir / name
        rowdir.mkdir(exist_ok=True)
        env = {
            "SENDERS_FILE": str(self.senders_file),
            "SMTP_SECURITY": "none",
            "STATUS_STORE_URL": self.redis.url
            if store == "redis" and self.redis
            else args.memory_url,
            "RATE_LIMIT": "",
            "EMAIL_LOG": str(rowdir / "email_log.txt"),
            "WORKERS": str(args.workers),
            "GUNICORN_WORKERS": str(args.gunicorn_workers),
            "DRAIN_SECONDS": "5",
            **dict(WORKLOADS[workload].env),
        }
        self.sink.reset()
        service = ServiceProcess(rowdir, env, kind=kind)
        try:
            start_settled(service)
            pids_before = service.pids()
            cpu_before = cpu_seconds(pids_before)
            rss_before = memory_kb(pids_before, "VmRSS")
            redis_pids = self.redis.pids() if store == "redis" and self.redis else []
            redis_cpu_before = cpu_seconds(redis_pids)
            sink_cpu_before = cpu_seconds(self.sink.pids())
            load = self.fire(service, workload)
            accepted = load.accepted * per_request
            stats = wait_for_sink(self.sink, accepted, args.wait, args.stall)
            pids = service.pids()
            cpu = cpu_seconds(pids) - cpu_before
            redis_cpu = cpu_seconds(redis_pids) - redis_cpu_before
            sink_cpu = cpu_seconds(self.sink.pids()) - sink_cpu_before
            peak_kb = memory_kb(pids, "VmHWM")
            rss_after = memory_kb(pids, "VmRSS")
            # Further bursts on the same processes: memory must come back to the same level
            # once each is drained (bounded by QUEUE_MAX, no growth per message).
            rss_after_each = [rss_after / 1024]
            for _ in range(args.bursts - 1):
                self.sink.reset()
                more = self.fire(service, workload)
                wait_for_sink(self.sink, more.accepted * per_request, args.wait, args.stall)
                rss_after_each.append(memory_kb(service.pids(), "VmRSS") / 1024)
        except RuntimeError as exc:
            row.notes.append(f"failed: {exc}")
            return row
        finally:
            exit_code = service.stop()
        self._fill(row, load, stats, per_request)
        row.peak_rss_mb = peak_kb / 1024
        row.cpu_us_per_msg = per_message(cpu, accepted)
        if sorted(pids) != sorted(pids_before):
            row.notes.append("the set of service processes changed during the run (a restart?)")
        if exit_code:
            row.notes.append(f"exit code {exit_code} on SIGTERM; its log's tail is in the JSON")
            row.details["log_tail"] = service.log_tail(80)
        row.details.update(
            processes=len(pids),
            rss_before_mb=rss_before / 1024,
            rss_after_mb=rss_after / 1024,
            rss_after_each_burst_mb=rss_after_each,
            redis_cpu_us_per_msg=per_message(redis_cpu, accepted) if redis_pids else None,
            sink_cpu_us_per_msg=per_message(sink_cpu, stats.messages),
        )
        if len(rss_after_each) > 1:
            shown = ", ".join(f"{mb:.0f}" for mb in rss_after_each)
            row.notes.append(f"RSS after each of {len(rss_after_each)} bursts: {shown} MB")
        return row

    @staticmethod
    def _fill(row: RowResult, load: LoadResult, stats: SinkStats, per_request: int) -> None:
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

    def row(self, name: str) -> Row:
        rowdir = self.workdir / name
        rowdir.mkdir(exist_ok=True)
        if name in stress_rows.SLOW_ROWS:
            return stress_rows.slow_clients_row(
                name, self.args, self.sink, self.senders_file, rowdir
            )
        if name in stress_rows.BIG_ROWS:
            return stress_rows.big_messages_row(name, self.args, self.redis, rowdir)
        if name in longpoll_rows.ROWS:
            return longpoll_rows.waiters_row(name, self, rowdir)
        return self.service_row(name)

    def run(self) -> tuple[list[Row], str]:
        self.sink.start()
        write_senders_file(self.senders_file, self.sink.port)
        redis_binary = find_redis_binary()
        if any(name.endswith("-redis") for name in self.args.rows) and redis_binary:
            self.redis = RedisServer(self.workdir, binary=redis_binary).start()
        ceiling = ceiling_row(self.args, self.sink)
        rows: list[Row] = [ceiling]
        generator = "none"
        for name in self.args.rows:
            print(f"bench: {name} ...", file=sys.stderr, flush=True)
            row = self.row(name)
            if isinstance(row, RowResult) and row.delivered_per_s and ceiling.delivered_per_s:
                row.vs_ceiling = row.delivered_per_s / ceiling.delivered_per_s
            row_vs_plain(row, rows)
            longpoll_rows.vs_baseline(row, rows)
            generator = row.details.get("generator", generator)
            rows.append(row)
        return rows, generator

    def close(self) -> None:
        if self.redis is not None:
            self.redis.stop()
        self.sink.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    loadavg_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="mail-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            rows, generator = bench.run()
        finally:
            bench.close()
    meta: dict[str, Any] = {
        "timestamp": started.strftime("%Y%m%dT%H%M%SZ"),
        "date": started.isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "loadavg_before": loadavg_before,
        "loadavg_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "generator": generator,
        "messages": args.messages,
        "concurrency": args.concurrency,
        "workers": args.workers,
        "gunicorn_workers": args.gunicorn_workers,
        "python": sys.version.split()[0],
    }
    print(f"\nload generator: {generator}; {os.cpu_count()} cores; load {loadavg_before}\n")
    print(format_table(rows))
    path = write_results(rows, meta, args.out)
    print(f"\nresults: {path} and {path.parent / 'summary.md'}")
    return 1 if any(row.shortfall for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
