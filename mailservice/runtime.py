"""Process tuning for a serving process: one core, the garbage collector, glibc's allocator.

Called by the entry points (`mail_server._serve`, gunicorn.conf.py's worker hooks) once per
process, with the switches of Settings (`PIN_CPUS`, `GC_TUNING`); nothing here reads the
environment.
"""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time


def pin_to_core(index: int, enabled: bool) -> int | None:
    """Pin this process to one of the cores it may use (index modulo their number).

    One Python process uses at most one core at a time; left free to move, its threads hand
    the GIL across cores, which on our 2-core machines cost 2 to 4 times the CPU per request.
    `enabled` is PIN_CPUS. The core, or None when not pinned.
    """
    if not enabled or not hasattr(os, "sched_setaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    core = cores[index % len(cores)]
    os.sched_setaffinity(0, {core})
    return core


MMAP_THRESHOLD = 128 * 1024
M_MMAP_THRESHOLD = -3  # glibc's mallopt() parameter number


def tune_malloc() -> bool:
    """Give the memory of big messages back to the system once they are gone.

    glibc serves an allocation of 128 KiB or more with mmap() and unmaps it when freed, but
    after the first such free it raises that threshold to the freed size, so every later
    message body of a few MB came from the heap, which glibc keeps: 100 queued 4 MB messages
    left the process at 1.6 MB of RSS per MB held, long after most copies were freed. Fixing the
    threshold keeps big buffers in mmap() (measured: 1.0 MB per MB); small objects are not
    affected. True where it applies (glibc).
    """
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):  # not glibc: its allocator has no such knob
        return False


FULL_GC_SECONDS = 60.0


def tune_gc(enabled: bool) -> None:
    """Keep the garbage collector's full collections out of the request path.

    A full collection scans every live object, and under a backlog (thousands of queued jobs)
    one took 100 to 200 ms, which became the accept latency's p99. The objects made at start
    are frozen out of collections, young generations are still collected as usual (they catch
    the few cycles a request leaves), and the full collection runs on a thread of its own
    every FULL_GC_SECONDS instead. `enabled` is GC_TUNING; off keeps Python's defaults.
    """
    if not enabled:
        return
    gc.freeze()
    threshold0, threshold1, _ = gc.get_threshold()
    gc.set_threshold(threshold0, threshold1, 1_000_000)

    def collect() -> None:
        while True:
            time.sleep(FULL_GC_SECONDS)
            gc.collect()

    threading.Thread(target=collect, name="full-gc", daemon=True).start()
