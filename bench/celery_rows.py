"""The Celery rows: the API under gunicorn with DISPATCHER=celery, Celery workers sending.

`celery-redis-N` (N = 1, 2, 4 worker processes) and `celery-rabbitmq-2` run the API as the
thread-pool rows do (gunicorn, `gunicorn.conf.py`, GUNICORN_WORKERS), on the bench's Redis
store, with `celery -A mailservice.celery_worker worker` processes taking the tasks from a
broker, and fire the same burst of plain sends; `/thread` compares delivered/s with the
thread-pool row on the same store (`gunicorn-redis`) of the same run.

Worker processes are the ones that send: `--celery-layout prefork` (the default) runs one
worker with `--concurrency N` prefork children, `instances` N workers of one child each (each
with a main process of its own that consumes from the broker). On the project's 2-core machine
both delivered at the same rate within the noise, and prefork spent less CPU per message
(10 to 30% less: one consuming main process, not N), so it is the default (bench/README.md).

The Redis broker is a redis-server of its own, not another db of the store's: INFO counts
commands, read events and CPU per server, not per db, so only a server of its own tells the
broker's round trips and CPU apart from the store's (both are in the JSON). The RabbitMQ row uses
a vhost of its own on the machine's server (RABBITMQ_URL), deleted after the row; without a
server that answers, the row is skipped with a note. CPU us/msg sums the API's processes, the
workers' main processes and their children; the JSON also has it per role.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from bench import burst
from bench.counters import CpuProbe, Probe, RabbitCounter, RedisCounter
from bench.profiles import format_summary, summarize
from bench.report import RowResult
from bench.services import settle, start_settled
from mailservice.testing.celery_worker import DEFAULT_APP, CeleryWorker
from mailservice.testing.rabbitmq import (
    RabbitVhost,
    find_rabbitmqctl,
    rabbitmq_answers,
    redact,
    server_url,
)
from mailservice.testing.redis_server import RedisServer
from mailservice.testing.service_process import ServiceProcess

if TYPE_CHECKING:
    from bench.run import Bench

CELERY_ROWS = ("celery-redis-1", "celery-redis-2", "celery-redis-4", "celery-rabbitmq-2")
THREAD_ROW = "gunicorn-redis"  # the thread pool on the same store: what /thread divides by
LAYOUTS = ("prefork", "instances", "threads")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Celery rows")
    group.add_argument(
        "--celery-layout",
        choices=LAYOUTS,
        default="prefork",
        help="N worker processes as one worker with --concurrency N (prefork, the default), "
        "as N workers of --concurrency 1 (instances), or as N workers of --pool threads "
        "with --celery-threads each (threads)",
    )
    group.add_argument(
        "--celery-threads",
        type=int,
        default=8,
        help="threads of each worker process with --celery-layout threads (default 8)",
    )
    group.add_argument(
        "--celery-profile",
        choices=("cpu", "wall"),
        help="run the workers under a profiler (bench/celery_profiled.py): CPU samples, or "
        "cProfile by the wall clock (much slower); the JSON and stdout get where the time goes",
    )


def with_thread_row(rows: list[str]) -> list[str]:
    """`rows`, with the thread-pool row just before the first Celery row when it is missing:
    a Celery row's /thread needs it, measured in the same run."""
    first = next((i for i, name in enumerate(rows) if name in CELERY_ROWS), None)
    if first is None or THREAD_ROW in rows:
        return rows
    return [*rows[:first], THREAD_ROW, *rows[first:]]


def row_vs_thread(row: RowResult, rows: list[RowResult]) -> None:
    """A Celery row's delivered/s against the thread pool's on the same store, same run."""
    thread = next((r for r in rows if r.name == THREAD_ROW), None)
    if row.name in CELERY_ROWS and thread and thread.delivered_per_s and row.delivered_per_s:
        row.vs_thread = row.delivered_per_s / thread.delivered_per_s


def shape(name: str) -> tuple[str, int]:
    """(broker, worker processes) of a row: `celery-redis-2` -> ("redis", 2)."""
    _, broker, processes = name.split("-")
    return broker, int(processes)


def rabbitmq_pids() -> list[int]:
    """The machine's RabbitMQ node (beam.smp), for its CPU: shared, so other work counts too."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == "beam.smp":
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _mains(workers: list[CeleryWorker]) -> list[int]:
    return [worker.pid for worker in workers if worker.pid]


def _children(workers: list[CeleryWorker]) -> list[int]:
    """The prefork pool's processes, the ones that send."""
    return [pid for worker in workers for pid in worker.children()]


class CeleryRows:
    """The Celery rows of one run, and the broker redis-server they share (started on first
    use, flushed before each row)."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.broker: RedisServer | None = None

    def _redis_broker(self) -> RedisServer:
        if self.broker is None:
            assert self.bench.redis is not None
            self.broker = RedisServer(self.bench.workdir, binary=self.bench.redis.binary).start()
        self.broker.flush()
        return self.broker

    def workers(self, rowdir: Path, env: dict[str, str], processes: int) -> list[CeleryWorker]:
        args = self.bench.args
        module = "bench.celery_profiled" if args.celery_profile else DEFAULT_APP
        if args.celery_profile:
            env = {
                **env,
                "BENCH_PROFILE_DIR": str(rowdir),
                "BENCH_PROFILE_CLOCK": args.celery_profile,
            }
        if args.celery_layout == "prefork":
            return [CeleryWorker(rowdir, env, processes, "w1", app_module=module)]
        if args.celery_layout == "threads":
            return [
                CeleryWorker(rowdir, env, args.celery_threads, f"w{n}", app_module=module,
                             pool="threads")
                for n in range(processes)
            ]  # fmt: skip
        return [CeleryWorker(rowdir, env, 1, f"w{n}", app_module=module) for n in range(processes)]

    def row(self, name: str) -> RowResult:
        bench, args = self.bench, self.bench.args
        broker_kind, processes = shape(name)
        row = RowResult(name, args.messages, accepted=0)
        store = bench.redis
        if store is None:
            row.notes.append("skipped: redis-server is not installed")
            return row
        vhost: RabbitVhost | None = None
        broker_probe: Probe
        if broker_kind == "rabbitmq":
            if find_rabbitmqctl() is None or not rabbitmq_answers():
                row.notes.append(f"skipped: RabbitMQ does not answer at {redact(server_url())}")
                return row
            vhost = RabbitVhost().start()
            broker_url, broker_probe = vhost.url, RabbitCounter(vhost.name)
            broker_pids: Callable[[], list[int]] = rabbitmq_pids
        else:
            broker = self._redis_broker()
            broker_url, broker_pids = broker.url, broker.pids
            broker_probe = RedisCounter(broker.port)
        store.flush()
        rowdir = bench.workdir / name
        rowdir.mkdir(exist_ok=True)
        env = {
            **bench.base_env(rowdir, store.url),
            "DISPATCHER": "celery",
            "CELERY_BROKER_URL": broker_url,
        }
        workers = self.workers(rowdir, env, processes)
        service = ServiceProcess(rowdir, env, kind="gunicorn")
        try:
            self._start(service, workers)
            probes: dict[str, Probe] = {
                "broker_counts": broker_probe,
                "store": RedisCounter(store.port),
                "broker_cpu_us_per_msg": CpuProbe(broker_pids),
                "redis_cpu_us_per_msg": CpuProbe(store.pids),
                "api_cpu_us_per_msg": CpuProbe(service.pids),
                "worker_main_cpu_us_per_msg": CpuProbe(lambda: _mains(workers)),
                "worker_children_cpu_us_per_msg": CpuProbe(lambda: _children(workers)),
            }
            burst.measure(
                row, args, bench.sink, lambda: bench.fire(service, "plain"), 1,
                lambda: service.pids() + _mains(workers) + _children(workers), probes,
            )  # fmt: skip
        except RuntimeError as exc:  # CeleryDidNotStart and ServiceDidNotStart are ones too
            row.notes.append(f"failed: {exc}")
            return row
        finally:
            exit_code = service.stop()  # first: its hand-over thread drains to the broker
            worker_codes = [worker.stop() for worker in workers]
            if vhost is not None:
                vhost.stop()
        bench.note_exit(row, service, exit_code)
        if any(worker_codes):
            row.notes.append(f"worker exit codes {worker_codes} on SIGTERM; tails in the JSON")
            row.details["worker_log_tails"] = [worker.log_tail(40) for worker in workers]
        row.broker_rt_per_msg = row.details["broker_counts"]["round_trips_per_msg"]
        row.details.update(
            broker=broker_kind, layout=args.celery_layout, worker_processes=processes
        )
        if vhost is not None:
            row.details["vhost"] = vhost.name
        if args.celery_profile:
            row.details["profile"] = summarize(rowdir, row.delivered)
            row.notes.append(f"workers ran under a profiler ({args.celery_profile}): slower")
            print(format_summary(name, row.details["profile"]), file=sys.stderr)
        return row

    @staticmethod
    def _start(service: ServiceProcess, workers: list[CeleryWorker]) -> None:
        """The workers and the API at once (each takes seconds to import), then idle."""
        with ThreadPoolExecutor(len(workers) + 1) as pool:
            started = [pool.submit(worker.start) for worker in workers]
            started.append(pool.submit(start_settled, service))
            for future in started:
                future.result()  # its error, if any, once all have finished starting
        settle(lambda: service.pids() + _mains(workers) + _children(workers), timeout=30.0)

    def close(self) -> None:
        if self.broker is not None:
            self.broker.stop()
