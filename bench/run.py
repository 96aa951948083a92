"""`make bench`: the service under a bounded burst, row by row, against the in-run SMTP ceiling.

For each row the bench starts the service as production runs it (gunicorn with the app factory,
or `python mail_server.py`) with the memory or the Redis store, fires `--messages` sends at
`--concurrency` from wrk (or the Python client when wrk is missing), waits (with a deadline) for
the counting sink to receive every accepted message, reads CPU time and peak RSS from /proc,
and stops the service. The first row is the ceiling: plain smtplib, same messages, no HTTP,
no store. The Celery rows (bench/celery_rows.py) run the API with DISPATCHER=celery and Celery
workers on a broker, beside the thread pool on the same store. Then the stress rows
(bench/stress_rows.py): normal calls while 100 clients send a byte at a time (slow-clients-*),
and memory per MB of big messages queued while SMTP is down (big-messages-*). Every process it
starts listens on 127.0.0.1 only and is stopped on the way out.
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

from bench import burst, celery_rows, longpoll_rows, smtp_in_rows, stress_rows
from bench.ceiling import run_ceiling
from bench.counters import CpuProbe, Probe, RedisCounter
from bench.load import LoadResult, lua_script, run_python, run_wrk
from bench.measure import per_message, per_second, wait_for_sink
from bench.report import Row, RowResult, format_table, write_results
from bench.services import cpu_seconds, start_settled
from bench.sink import SinkProcess
from bench.workload import API_KEY, WORKLOADS, write_senders_file
from mailservice.testing.ports import free_port
from mailservice.testing.redis_server import RedisServer, find_redis_binary
from mailservice.testing.service_process import ROOT, ServiceProcess

# The Celery rows come right after gunicorn-redis, the thread pool on their store: /thread.
THROUGHPUT_ROWS = (
    "gunicorn-memory", "gunicorn-redis", *celery_rows.CELERY_ROWS, "plain-memory", "plain-redis",
)  # fmt: skip
# gunicorn-memory with other content (bench/workload.py); /plain compares each with
# gunicorn-memory of the same run. A batch row's --messages are sent 100 to a request.
CONTENT_ROWS = ("gunicorn-memory-templated", "gunicorn-memory-attachment", "gunicorn-memory-batch")
PLAIN_ROW = "gunicorn-memory"
ROWS = (*THROUGHPUT_ROWS, *CONTENT_ROWS, *stress_rows.SLOW_ROWS, *stress_rows.BIG_ROWS)
ROWS += longpoll_rows.ROWS  # one gunicorn worker, with and without 200 long polls
ROWS += smtp_in_rows.ROWS  # submitted over SMTP (SMTP_LISTEN), 8 reused connections
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
        help=f"comma-separated, of {', '.join(ROWS)} (all but slow-clients-gthread); "
        f"a Celery row brings {celery_rows.THREAD_ROW} along",
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
    celery_rows.add_arguments(parser)
    stress_rows.add_arguments(parser)
    longpoll_rows.add_arguments(parser)
    smtp_in_rows.add_arguments(parser)
    args = parser.parse_args(argv)
    args.rows = [name.strip() for name in args.rows.split(",") if name.strip()]
    args.rows = celery_rows.with_thread_row(args.rows)
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
        self.celery = celery_rows.CeleryRows(self)
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

    def base_env(self, rowdir: Path, store_url: str) -> dict[str, str]:
        """The settings of every throughput row's service (a Celery row's workers too)."""
        return {
            "SENDERS_FILE": str(self.senders_file),
            "SMTP_SECURITY": "none",
            "STATUS_STORE_URL": store_url,
            "RATE_LIMIT": "",
            "EMAIL_LOG": str(rowdir / "email_log.txt"),
            "WORKERS": str(self.args.workers),
            "GUNICORN_WORKERS": str(self.args.gunicorn_workers),
            "DRAIN_SECONDS": "5",
        }

    def service_row(self, name: str) -> RowResult:
        args = self.args
        kind, store, *rest = name.split("-")
        workload = rest[0] if rest else "plain"
        row = RowResult(name, args.messages, accepted=0)
        probes: dict[str, Probe] = {}
        if store == "redis":
            if self.redis is None:
                row.notes.append("skipped: redis-server is not installed")
                return row
            self.redis.flush()
            probes = {
                "redis_cpu_us_per_msg": CpuProbe(self.redis.pids),
                "store": RedisCounter(self.redis.port),
            }
        rowdir = self.workdir / name
        rowdir.mkdir(exist_ok=True)
        store_url = self.redis.url if store == "redis" and self.redis else args.memory_url
        env = {**self.base_env(rowdir, store_url), **dict(WORKLOADS[workload].env)}
        self.sink.reset()
        service = ServiceProcess(rowdir, env, kind=kind)
        try:
            start_settled(service)
            burst.measure(
                row, args, self.sink, lambda: self.fire(service, workload),
                WORKLOADS[workload].messages_per_request, service.pids, probes,
            )  # fmt: skip
        except RuntimeError as exc:
            row.notes.append(f"failed: {exc}")
            return row
        finally:
            exit_code = service.stop()
        self.note_exit(row, service, exit_code)
        return row

    @staticmethod
    def note_exit(row: RowResult, service: ServiceProcess, exit_code: int | None) -> None:
        if exit_code:
            row.notes.append(f"exit code {exit_code} on SIGTERM; its log's tail is in the JSON")
            row.details["log_tail"] = service.log_tail(80)

    def row(self, name: str) -> Row:
        rowdir = self.workdir / name
        rowdir.mkdir(exist_ok=True)
        if name in stress_rows.SLOW_ROWS:
            return stress_rows.slow_clients_row(
                name, self.args, self.sink, self.senders_file, rowdir
            )
        if name in stress_rows.BIG_ROWS:
            return stress_rows.big_messages_row(name, self.args, self.redis, rowdir)
        if name in celery_rows.CELERY_ROWS:
            self.sink.reset()
            return self.celery.row(name)
        if name in longpoll_rows.ROWS:
            return longpoll_rows.waiters_row(name, self, rowdir)
        if name in smtp_in_rows.ROWS:
            env = self.base_env(rowdir, self.args.memory_url)
            return smtp_in_rows.smtp_in_row(self.args, self.sink, env, rowdir)
        return self.service_row(name)

    def run(self) -> tuple[list[Row], str]:
        self.sink.start()
        write_senders_file(self.senders_file, self.sink.port)
        redis_binary = find_redis_binary()
        # A Celery row brings gunicorn-redis (parse_args): its store is this Redis too.
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
            if isinstance(row, RowResult):
                celery_rows.row_vs_thread(row, [r for r in rows if isinstance(r, RowResult)])
            longpoll_rows.vs_baseline(row, rows)
            generator = row.details.get("generator", generator)
            rows.append(row)
        return rows, generator

    def close(self) -> None:
        self.celery.close()
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
