"""The bench rows that put the service under hostile conditions instead of a plain burst.

`slow_clients_row()`: the service as production runs it (or `python mail_server.py`, or
stock gthread for comparison) while `--slow-connections` clients send a request a byte at a
time (bench/slow_clients.py); meanwhile one client makes normal calls, a send and then a read of
its status, one pair every `--slow-pace` seconds for `--slow-seconds`, each with a client
timeout of `--slow-timeout`: their p50 and p99 are what normal clients see. The store is a
SQLite file, shared by gunicorn's workers, so that a status read may land on either worker.

`big_messages_row()`: `python mail_server.py` with the memory store or with the bench's Redis,
its SMTP server a closed loopback port (nothing listens there), so that every send fails its
first attempt and waits for a retry (MAX_ATTEMPTS and RETRY_BACKOFF large enough that none
fails during the row). `--big-requests` sends with a `--big-mb` body each; the
service's RSS before and after, once it has settled, gives RSS MB per MB of queued content.
The sends go `--big-concurrency` at a time, each with a 60 s client timeout.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.report import BigMessagesResult, SlowClientsResult
from bench.services import memory_kb, start_settled
from bench.sink import SinkProcess
from bench.slow_clients import Dribblers, body_payload, head_payload, normal_calls
from bench.workload import API_KEY, RECIPIENT, SEND_PATH, body_bytes, write_senders_file
from mailservice.testing.ports import free_port
from mailservice.testing.redis_server import RedisServer
from mailservice.testing.service_process import ServiceProcess

SLOW_ROWS = ("slow-clients-gunicorn", "slow-clients-plain", "slow-clients-gthread")
BIG_ROWS = ("big-messages-memory", "big-messages-redis")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of these rows."""
    slow = parser.add_argument_group("slow-clients rows")
    slow.add_argument("--slow-connections", type=int, default=100, help="slow clients (100)")
    slow.add_argument("--slow-interval", type=float, default=0.1, help="s between bytes (0.1)")
    slow.add_argument("--slow-mode", choices=("head", "body"), default="head")
    slow.add_argument("--slow-seconds", type=float, default=30, help="normal calls for (30)")
    slow.add_argument("--slow-pace", type=float, default=0.05, help="s per call pair (0.05)")
    slow.add_argument("--slow-timeout", type=float, default=20, help="client timeout (20)")
    big = parser.add_argument_group("big-messages rows")
    big.add_argument("--big-requests", type=int, default=100, help="sends (100)")
    big.add_argument("--big-mb", type=float, default=4.0, help="body MiB per send (4)")
    big.add_argument("--big-concurrency", type=int, default=8, help="sends at once (8)")
    big.add_argument(
        "--big-queue-max-bytes",
        type=int,
        default=1 << 30,
        help="QUEUE_MAX_BYTES of the row (1 GiB: all of 100 x 4 MB fit; lower it to see 503s)",
    )


def _base_env(rowdir: Path, senders: Path, store_url: str) -> dict[str, str]:
    return {
        "SENDERS_FILE": str(senders),
        "SMTP_SECURITY": "none",
        "STATUS_STORE_URL": store_url,
        "RATE_LIMIT": "",
        "EMAIL_LOG": str(rowdir / "email_log.txt"),
        "DRAIN_SECONDS": "2",
    }


def slow_clients_row(
    name: str, args: argparse.Namespace, sink: SinkProcess, senders: Path, rowdir: Path
) -> SlowClientsResult:
    row = SlowClientsResult(name, args.slow_connections)
    variant = name.removeprefix("slow-clients-")
    env = {
        **_base_env(rowdir, senders, f"sqlite:///{_new_wal_file(rowdir / 'status.db')}"),
        "WORKERS": str(args.workers),
        "GUNICORN_WORKERS": str(args.gunicorn_workers),
    }
    if variant == "gthread":  # the worker class gunicorn.conf.py had before http_worker.py
        env["GUNICORN_CMD_ARGS"] = "--worker-class gthread"
    sink.reset()
    service = ServiceProcess(rowdir, env, kind="plain" if variant == "plain" else "gunicorn")
    if args.slow_mode == "head":
        dribblers = Dribblers(
            service.port, args.slow_connections, args.slow_interval,
            head_payload("127.0.0.1", API_KEY, SEND_PATH),
        )  # fmt: skip
    else:
        head, body = body_payload("127.0.0.1", API_KEY, SEND_PATH, body_bytes())
        dribblers = Dribblers(
            service.port, args.slow_connections, args.slow_interval, body, first=head
        )
    try:
        start_settled(service)
        dribblers.start()
        if not dribblers.wait_open(15):
            row.notes.append("not every slow client could connect within 15 s")
        time.sleep(1.0)  # every slow connection has sent a few bytes and holds what it takes
        pairs = max(1, int(args.slow_seconds / args.slow_pace))
        calls = normal_calls(
            service.port, API_KEY, SEND_PATH, body_bytes(), pairs, args.slow_timeout,
            pace=args.slow_pace, max_seconds=args.slow_seconds,
        )  # fmt: skip
        slow = dribblers.stop()
        deadline = time.monotonic() + args.wait
        while sink.stats().messages < len(calls.send_ms) and time.monotonic() < deadline:
            time.sleep(0.05)
        delivered = sink.stats().messages
    except RuntimeError as exc:
        row.notes.append(f"failed: {exc}")
        dribblers.stop()
        return row
    finally:
        exit_code = service.stop()
    row.calls, row.answered = calls.made, calls.ok
    for key, value in calls.summary().items():
        setattr(row, key, value)
    row.slow_closed = slow.closed_by_server + slow.answered_by_server
    row.accepted, row.delivered = len(calls.send_ms), delivered
    if calls.failures:
        row.notes.append(f"failed calls: {calls.failures}; first: {calls.first_failures[:2]}")
    if exit_code:
        row.notes.append(f"exit code {exit_code} on SIGTERM; its log's tail is in the JSON")
        row.details["log_tail"] = service.log_tail(80)
    row.details.update(
        slow_clients={name: getattr(slow, name) for name in slow.__slots__},
        slow_interval_s=args.slow_interval,
        slow_mode=args.slow_mode,
        pairs_planned=pairs,
        stopped_at_time_limit=calls.stopped_at_limit,
        failures=calls.failures,
        first_failures=calls.first_failures,
        worker=_worker_line(service),
    )
    return row


def _new_wal_file(path: Path) -> Path:
    """A SQLite file already in WAL mode: two gunicorn workers switching a new file to WAL at
    the same moment can fail to start with "database is locked"."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=WAL")
    return path


def _worker_line(service: ServiceProcess) -> str | None:
    """gunicorn's `Using worker: ...` line, the proof of which worker class ran."""
    lines = service.log_tail(400).splitlines()
    return next(
        (line.split("Using worker: ")[1] for line in lines if "Using worker:" in line), None
    )


def big_body(megabytes: float) -> bytes:
    """A send whose text body is `megabytes` MiB of ordinary 70-character lines."""
    line = "This line is one of many in a large message, to fill it with text.\n"
    text = line * int(megabytes * 1024 * 1024 / len(line))
    payload = {"recipient": RECIPIENT, "subject": "A large message", "body": text}
    return json.dumps(payload, separators=(",", ":")).encode()


def _settled_rss_kb(pids: list[int], timeout: float = 30.0, samples: int = 4) -> int:
    """VmRSS once it has stayed within 2 MB for `samples` readings 0.5 s apart (or at timeout)."""
    deadline = time.monotonic() + timeout
    readings = [memory_kb(pids, "VmRSS")]
    while time.monotonic() < deadline:
        time.sleep(0.5)
        readings.append(memory_kb(pids, "VmRSS"))
        last = readings[-samples:]
        if len(last) == samples and max(last) - min(last) < 2048:
            break
    return readings[-1]


def big_messages_row(
    name: str, args: argparse.Namespace, redis: RedisServer | None, rowdir: Path
) -> BigMessagesResult:
    row = BigMessagesResult(name, args.big_requests, args.big_mb)
    store = name.removeprefix("big-messages-")
    if store == "redis":
        if redis is None:
            row.notes.append("skipped: redis-server is not installed")
            return row
        redis.flush()
    body = big_body(args.big_mb)
    senders = write_senders_file(rowdir / "data.csv", free_port())  # nothing listens there
    env = {
        **_base_env(rowdir, senders, redis.url if store == "redis" and redis else "memory://"),
        "WORKERS": str(args.workers),
        "MAX_ATTEMPTS": "1000",
        "RETRY_BACKOFF": "3600",  # the first retry comes long after the row is over
        "SMTP_TIMEOUT": "5",
        "QUEUE_MAX": str(max(1000, 2 * args.big_requests)),
        "QUEUE_MAX_BYTES": str(args.big_queue_max_bytes),
        "MAX_REQUEST_BYTES": str(max(10 << 20, len(body) + (64 << 10))),
        "DRAIN_SECONDS": "0",
    }
    service = ServiceProcess(rowdir, env)
    statuses: dict[str, int] = {}
    try:
        start_settled(service)
        pids = service.pids()
        row.rss_before_mb = _settled_rss_kb(pids) / 1024
        redis_before = memory_kb(redis.pids(), "VmRSS") if store == "redis" and redis else 0
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=max(1, args.big_concurrency)) as senders_pool:
            for code in senders_pool.map(
                lambda _: _post(service.port, body), range(args.big_requests)
            ):
                statuses[code] = statuses.get(code, 0) + 1
        sending_s = time.monotonic() - started
        row.rss_after_mb = _settled_rss_kb(pids) / 1024
        row.peak_rss_mb = memory_kb(pids, "VmHWM") / 1024
        redis_after = memory_kb(redis.pids(), "VmRSS") if store == "redis" and redis else 0
    except RuntimeError as exc:
        row.notes.append(f"failed: {exc}")
        return row
    finally:
        service.stop()
    row.accepted, row.refused = statuses.get("202", 0), statuses.get("503", 0)
    other = {code: n for code, n in statuses.items() if code not in ("202", "503")}
    if other:
        row.notes.append(f"answers other than 202 and 503: {other}")
    row.details.update(
        statuses=statuses,
        request_bytes=len(body),
        sending_seconds=sending_s,
        queue_max_bytes=args.big_queue_max_bytes,
        concurrency=args.big_concurrency,
        redis_rss_before_mb=redis_before / 1024 if redis_before else None,
        redis_rss_after_mb=redis_after / 1024 if redis_after else None,
    )
    return row


def _post(port: int, body: bytes) -> str:
    """POST one send; its status code as text, or the kind of error."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    try:
        conn.request("POST", SEND_PATH, body, headers)
        response = conn.getresponse()
        response.read()
        return str(response.status)
    except (OSError, http.client.HTTPException) as exc:
        return type(exc).__name__
    finally:
        conn.close()
