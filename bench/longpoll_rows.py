"""The long-poll rows: the gunicorn-memory burst on ONE gunicorn worker, with and without 200
clients long-polling that same worker the whole time (issue 15: "200 concurrent waiters on one
process with gunicorn, the send rate unaffected").

Both rows start the service alike: gunicorn, GUNICORN_WORKERS=1, the memory store, and a
senders file with a second key whose SMTP server is a loopback port nothing listens on. Before
the burst, `--waiters` sends of that key are made: each fails to connect and waits for a retry
long after the row (MAX_ATTEMPTS, RETRY_BACKOFF and SMTP_SERVER_PAUSE large), so that they stay
unfinished, holding no sending thread. SMTP_SERVER_THREADS is WORKERS, so that the sink keeps
every sending thread as in gunicorn-memory (with two servers the default would halve them).
Then in `gunicorn-memory-200-waiters` one client thread per held request long-polls it
(`GET /email-status/<id>?wait=--waiter-wait`) and polls again when answered, each at most
`--waiter-polls` times, until the burst and its delivery are over; `gunicorn-memory-1-worker`
has the same held requests and no waiters. The burst is the bench's own (`Bench.fire`), the
figures those of the throughput rows; the waiters row's `/plain` is its delivered/s divided by
that of gunicorn-memory-1-worker of the same run (`vs_baseline`). Its notes say how many
waiters were waiting when the burst began and ended, and what their answers were. At the end
the service is stopped (SIGTERM) while they wait: its stop hook answers them at once.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import burst
from bench.measure import per_message, wait_for_sink
from bench.report import Row, RowResult
from bench.services import cpu_seconds, memory_kb, start_settled
from bench.workload import SEND_PATH, write_senders_file
from mailservice.testing.ports import free_port
from mailservice.testing.service_process import ServiceProcess, children

BASELINE_ROW = "gunicorn-memory-1-worker"
WAITERS_ROW = "gunicorn-memory-200-waiters"
ROWS = (BASELINE_ROW, WAITERS_ROW)
HELD_KEY = "bench-held-key-0123456789"  # its sender's SMTP server is a port nobody listens on


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of these rows."""
    group = parser.add_argument_group("long-poll rows")
    group.add_argument("--waiters", type=int, default=200, help="long-poll clients (200)")
    group.add_argument("--waiter-wait", type=float, default=10, help="their ?wait= (10 s)")
    group.add_argument("--waiter-polls", type=int, default=100, help="polls each, at most (100)")


class Waiters:
    """One thread per request id, long-polling it again and again until `stop()`."""

    def __init__(self, port: int, ids: list[str], wait: float, polls: int) -> None:
        self.port, self.ids, self.wait, self.polls = port, ids, wait, polls
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.in_flight = 0  # polls sent and not yet answered
        self.answers: Counter[str] = Counter()  # "200 retrying", "404", "error ..."
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in ids]

    def start(self) -> Waiters:
        for thread in self._threads:
            thread.start()
        return self

    def _run(self, request_id: str) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.wait + 30)
        path = f"/email-status/{request_id}?wait={self.wait:g}"
        for _ in range(self.polls):
            if self._stop.is_set():
                break
            with self._lock:
                self.in_flight += 1
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                body = response.read()
                answer = f"{response.status} {json.loads(body).get('status', '')}".strip()
            except (OSError, http.client.HTTPException, ValueError) as exc:
                answer = f"error {type(exc).__name__}"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.wait + 30)
            with self._lock:
                self.in_flight -= 1
                self.answers[answer] += 1
        conn.close()

    def stop(self) -> None:
        """No more polls; the ones under way end when answered (the service's stop answers them)."""
        self._stop.set()

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def _senders(path: Path, sink_port: int) -> Path:
    """The bench's sender (to the sink) and the held requests' sender (to a dead port)."""
    write_senders_file(path, sink_port)
    with path.open("a", encoding="utf-8") as out:
        out.write(f"{HELD_KEY},held@example.com,,127.0.0.1,{free_port()},none,Held\n")
    return path


def _call(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {HELD_KEY}", "Content-Type": "application/json"}
    try:
        conn.request(method, path, None if body is None else json.dumps(body), headers)
        response = conn.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else None
    finally:
        conn.close()


def _held_requests(service: ServiceProcess, count: int, timeout: float = 30.0) -> list[str]:
    """`count` sends of the held key, once none of them is `sending` any more (each retrying,
    or queued behind its paused server): unfinished for the rest of the row."""
    ids = []
    for n in range(count):
        message = {"recipient": f"held{n}@example.org", "subject": "Held", "body": "held"}
        status, body = _call(service.port, "POST", SEND_PATH, message)
        if status != 202:
            raise RuntimeError(f"a held request was answered {status}: {body}")
        ids.append(body["request_id"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = {_call(service.port, "GET", f"/email-status/{i}")[1]["status"] for i in ids}
        if states <= {"queued", "retrying"}:
            return ids
        time.sleep(0.2)
    raise RuntimeError(f"the held requests did not settle within {timeout:.0f} s: {states}")


def _thread_count(pids: list[int]) -> int:
    """Threads of these processes (a long poll under way holds one of its worker's)."""
    folders = (Path(f"/proc/{pid}/task") for pid in pids)
    return sum(len(os.listdir(folder)) for folder in folders if folder.is_dir())


def waiters_row(name: str, bench: Any, rowdir: Path) -> RowResult:
    """One of ROWS; `bench` is the run's `bench.run.Bench` (its args, sink and burst)."""
    args = bench.args
    row = RowResult(name, args.messages, accepted=0)
    env = {
        "SENDERS_FILE": str(_senders(rowdir / "data.csv", bench.sink.port)),
        "SMTP_SECURITY": "none",
        "STATUS_STORE_URL": args.memory_url,
        "RATE_LIMIT": "",
        "EMAIL_LOG": str(rowdir / "email_log.txt"),
        "WORKERS": str(args.workers),
        "GUNICORN_WORKERS": "1",
        "SMTP_SERVER_THREADS": str(args.workers),
        "MAX_ATTEMPTS": "1000",
        "RETRY_BACKOFF": "3600",
        "SMTP_SERVER_PAUSE": "3600",
        "SMTP_TIMEOUT": "5",
        "DRAIN_SECONDS": "2",
    }
    bench.sink.reset()
    service = ServiceProcess(rowdir, env, kind="gunicorn")
    waiters: Waiters | None = None
    try:
        start_settled(service)
        ids = _held_requests(service, args.waiters)
        workers = children(service.pids()[0])
        if name == WAITERS_ROW:
            threads_before = _thread_count(workers)
            waiters = Waiters(service.port, ids, args.waiter_wait, args.waiter_polls).start()
            deadline = time.monotonic() + 30
            while _thread_count(workers) < threads_before + len(ids):  # each holds a thread
                if time.monotonic() > deadline:
                    row.notes.append("not every waiter got a long-poll thread within 30 s")
                    break
                time.sleep(0.1)
        pids = service.pids()
        cpu_before = cpu_seconds(pids)
        waiting_at_start = waiters.in_flight if waiters else 0
        load = bench.fire(service, "plain")
        stats = wait_for_sink(bench.sink, load.accepted, args.wait, args.stall)
        waiting_at_end = waiters.in_flight if waiters else 0
        cpu = cpu_seconds(pids) - cpu_before
        peak_kb = memory_kb(pids, "VmHWM")
    except (RuntimeError, OSError) as exc:
        row.notes.append(f"failed: {exc}")
        return row
    finally:
        if waiters is not None:
            waiters.stop()
        exit_code = service.stop()  # SIGTERM: the waiters still waiting are answered at once
        if waiters is not None:
            waiters.join(args.waiter_wait + 30)
    burst.fill(row, load, stats, 1)
    row.peak_rss_mb = peak_kb / 1024
    row.cpu_us_per_msg = per_message(cpu, load.accepted)
    if exit_code:
        row.notes.append(f"exit code {exit_code} on SIGTERM; its log's tail is in the JSON")
        row.details["log_tail"] = service.log_tail(80)
    row.details.update(held_requests=len(ids), worker_processes=len(workers))
    if waiters is not None:
        answers = dict(waiters.answers)
        row.notes.append(
            f"{waiting_at_start} waiters waiting when the burst began, {waiting_at_end} when "
            f"the sink had it; their answers: {answers}"
        )
        row.details.update(
            waiters=len(ids), waiter_wait_s=args.waiter_wait, waiter_answers=answers,
            waiting_at_start=waiting_at_start, waiting_at_end=waiting_at_end,
        )  # fmt: skip
    return row


def vs_baseline(row: Row, rows: list[Row]) -> None:
    """The waiters row's delivered/s against gunicorn-memory-1-worker's of the same run, once
    both ran (`row` the one that just ran, `rows` those before it, in either order)."""
    named = {r.name: r for r in (*rows, row) if isinstance(r, RowResult)}
    waiting, base = named.get(WAITERS_ROW), named.get(BASELINE_ROW)
    if row.name not in ROWS or waiting is None or base is None:
        return
    if waiting.delivered_per_s and base.delivered_per_s:
        waiting.vs_plain = waiting.delivered_per_s / base.delivered_per_s
        waiting.notes.append(f"delivered/s {waiting.vs_plain:.2f} x that of {BASELINE_ROW}")
