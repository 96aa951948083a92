"""The bench's readings of the processes it runs, and how it starts the service for a row.

The processes themselves are the tests' own (mailservice/testing): `ServiceProcess` runs the
service as production does, `RedisServer` a throw-away `redis-server`. Here: CPU time and
memory read from /proc for a process and its children (gunicorn's workers), and
`start_settled()`, which waits after start-up until the service is idle (`settle()`, for any set
of processes), so that what a row measures is the burst and not the import of the app.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from mailservice.testing.service_process import ServiceProcess, stat_fields

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes, in seconds (processes gone are skipped)."""
    ticks = 0
    for pid in pids:
        try:
            fields = stat_fields(pid)
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / CLOCK_TICKS


def memory_kb(pids: list[int], field: str) -> int:
    """The sum of one /proc/<pid>/status field (VmRSS, VmHWM) over these processes."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def start_settled(
    service: ServiceProcess, timeout: float = 30.0, quiet: float = 0.02, interval: float = 0.3
) -> ServiceProcess:
    """Start the service, then wait (within the same `timeout`) until its processes are idle:
    a gunicorn worker answers /healthz while its sibling may still be importing the app, whose
    CPU would count against the burst."""
    deadline = time.monotonic() + timeout
    service.start(timeout)
    settle(service.pids, deadline - time.monotonic(), quiet, interval)
    return service


def settle(
    pids: Callable[[], list[int]], timeout: float, quiet: float = 0.02, interval: float = 0.3
) -> bool:
    """Wait up to `timeout` s until these processes used less than `quiet` s of CPU in one
    `interval`; whether they did."""
    deadline = time.monotonic() + timeout
    before = cpu_seconds(pids())
    while time.monotonic() < deadline:
        time.sleep(interval)
        now = cpu_seconds(pids())
        if now - before < quiet:
            return True
        before = now
    return False
