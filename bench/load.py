"""The load generators: a bounded burst of POST /send-email, by wrk or by a Python client.

wrk is duration-based; its Lua script makes it count-based: wrk asks `delay()` before every
request (a connection's first one included), which lets a request go only while the thread's
share of the burst is not all issued, and otherwise parks the connection for an hour. When a
thread has had all its answers it stops and prints `BENCH_THREAD_DONE`; once every thread has,
the bench interrupts wrk (SIGINT), whose `done()` prints one `BENCH_RESULT` JSON line: latency
percentiles, status counts, and wall-clock times taken with clock_gettime through LuaJIT's ffi,
comparable with the sink's time.time(). `-d` is only an upper bound. The script's template is
`bench/wrk_send.lua`.

The Python client (used when wrk is missing) runs `concurrency` threads, each with one keep-alive
http.client connection; it tops out near 1,100 requests/s by itself.
"""

from __future__ import annotations

import http.client
import itertools
import json
import queue
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

# The wrk script, with __PATH__, __KEY__ and __BODY__ filled in by lua_script().
LUA_TEMPLATE = (Path(__file__).parent / "wrk_send.lua").read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What the load generator saw of one burst; times are wall-clock (time.time())."""

    generator: str
    responses: int
    statuses: dict[str, int]
    errors: dict[str, int]
    first_request: float | None
    first_202: float | None
    last_response: float | None
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    notes: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return self.statuses.get("202", 0)

    @property
    def accepted_per_s(self) -> float | None:
        if not self.accepted or self.first_request is None or self.last_response is None:
            return None
        elapsed = self.last_response - self.first_request
        return self.accepted / elapsed if elapsed > 0 else None


def lua_script(body: bytes, key: str, path: str) -> str:
    """The wrk script that posts `body` with `Authorization: Bearer <key>`."""
    text = body.decode()
    if "]==]" in text or "__" in key + path:
        raise ValueError("the body, key or path cannot be embedded in the Lua script")
    return LUA_TEMPLATE.replace("__PATH__", path).replace("__KEY__", key).replace("__BODY__", text)


def wrk_version(wrk: str) -> str:
    """wrk's own version line, e.g. `wrk debian/4.1.0-3+b2 [epoll]`."""
    result = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10, check=False)
    first = (result.stdout or result.stderr).splitlines()[:1]
    return first[0].split(" Copyright")[0].strip() if first else "wrk"


def run_wrk(
    wrk: str,
    url: str,
    script: Path,
    total: int,
    concurrency: int,
    threads: int,
    max_seconds: float,
) -> LoadResult:
    """Fire exactly `total` requests with wrk; stop it as soon as every answer is in."""
    if concurrency % threads or total < concurrency:
        raise ValueError("wrk needs concurrency divisible by threads and total >= concurrency")
    cmd = [
        wrk, f"-t{threads}", f"-c{concurrency}", f"-d{max(1, int(max_seconds))}s",
        "--timeout", "30s", "-s", str(script), url,
        "--", str(total), str(threads), str(concurrency // threads),
    ]  # fmt: skip
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + max_seconds + 30
    finished, output, result = 0, [], None
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            continue
        if line is None:
            break
        output.append(line)
        if line.startswith("BENCH_THREAD_DONE"):
            finished += 1
            if finished == threads:
                process.send_signal(signal.SIGINT)  # wrk sleeps for -d otherwise
        elif line.startswith("BENCH_RESULT "):
            result = json.loads(line.removeprefix("BENCH_RESULT "))
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)
    if process.stdout is not None:
        process.stdout.close()
    if result is None:
        raise RuntimeError("wrk gave no result:\n" + "\n".join(output[-20:]))
    notes = [] if finished == threads else [f"wrk stopped at -d before all {total} answers"]
    return LoadResult(
        generator=f"{wrk_version(wrk)}, Lua script, {threads} thread(s)",
        responses=result["responses"],
        statuses={str(k): v for k, v in result["statuses"].items()},
        errors={k: v for k, v in result["errors"].items() if v},
        first_request=result["first_request"],
        first_202=result["first_202"],
        last_response=result["last_response"],
        p50_ms=result["p50_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        max_ms=result["max_us"] / 1000,
        notes=notes,
    )


def percentile(sorted_values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(1, round(pct / 100 * len(sorted_values) + 0.5 - 1e-9))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def run_python(
    host: str,
    port: int,
    path: str,
    body: bytes,
    key: str,
    total: int,
    concurrency: int,
    max_seconds: float,
) -> LoadResult:
    """Fire `total` requests from `concurrency` threads, each on one keep-alive connection."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    tickets = itertools.count()  # next() on itertools.count is atomic under the GIL
    deadline = time.monotonic() + max_seconds
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    errors = {"connect": 0, "read": 0}
    times: dict[str, float] = {}

    def client() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        mine: list[float] = []
        while next(tickets) < total and time.monotonic() < deadline:
            sent = time.time()
            start = time.perf_counter()
            try:
                conn.request("POST", path, body, headers)
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                with lock:
                    errors["read"] += 1
                continue
            mine.append(time.perf_counter() - start)
            done = time.time()
            with lock:
                code = str(response.status)
                statuses[code] = statuses.get(code, 0) + 1
                times["first_request"] = min(times.get("first_request", sent), sent)
                times["last_response"] = max(times.get("last_response", done), done)
                if code == "202" and done < times.get("first_202", float("inf")):
                    times["first_202"] = done
        conn.close()
        with lock:
            latencies.extend(mine)

    workers = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()) + 35)
    latencies.sort()
    responses = sum(statuses.values())
    notes = [] if responses + sum(errors.values()) >= total else ["stopped at the time limit"]
    return LoadResult(
        generator=f"Python http.client, {concurrency} threads (wrk not used)",
        responses=responses,
        statuses=statuses,
        errors={k: v for k, v in errors.items() if v},
        first_request=times.get("first_request"),
        first_202=times.get("first_202"),
        last_response=times.get("last_response"),
        p50_ms=None if not latencies else percentile(latencies, 50) * 1000,  # type: ignore[operator]
        p99_ms=None if not latencies else percentile(latencies, 99) * 1000,  # type: ignore[operator]
        max_ms=latencies[-1] * 1000 if latencies else None,
        notes=notes,
    )
