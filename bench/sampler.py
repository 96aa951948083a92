"""A CPU sampling profiler for one process's main thread, light enough to leave a burst's rate
almost as it is (py-spy's idea, in the process itself, for machines without py-spy).

`CpuSampler(interval).start()` arms ITIMER_PROF, which counts the process's CPU time (user and
system, every thread's) and sends SIGPROF each `interval` of it; Python runs the handler on the
main thread between bytecodes, with that thread's current frame, so each sample is `interval`
of CPU charged to the stack running then (a C call's time to the Python function that made it).
A blocked process uses no CPU and gets no signal: waits are not in it. Another thread's CPU is
charged to the main thread's stack, which is fine where the main thread does the work (a
Celery worker's consumer, a prefork child's task). The kernel accounts CPU time by its clock
tick (4 ms at HZ=250), so signals come at most once a tick whatever `interval` says: a sample
is worth the process's CPU time while sampling divided by the samples, which `dump()` writes
with the counts (JSON), by function: its own samples (the top of the stack) and its total ones
(anywhere in the stack).
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from pathlib import Path
from types import FrameType

DEFAULT_INTERVAL = 0.001  # 1 ms of CPU: a thousand samples a busy second


def _label(frame: FrameType) -> str:
    code = frame.f_code
    parts = Path(code.co_filename).parts
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    return f"{'/'.join(parts[-3:])}:{code.co_firstlineno}({code.co_name})"


class CpuSampler:
    """Samples this process's main thread every `interval` s of the process's CPU time."""

    def __init__(self, interval: float = DEFAULT_INTERVAL) -> None:
        self.interval = interval
        self.samples = 0
        self.cpu_seconds = 0.0  # the process's CPU time from start() to stop()
        self._cpu_start = 0.0
        self.own: Counter[str] = Counter()
        self.total: Counter[str] = Counter()

    def _sample(self, signum: int, frame: FrameType | None) -> None:
        self.samples += 1
        if frame is None:
            return
        self.own[_label(frame)] += 1
        seen = set()
        while frame is not None:
            label = _label(frame)
            if label not in seen:  # a recursive function counts once per sample
                seen.add(label)
                self.total[label] += 1
            frame = frame.f_back

    def start(self) -> CpuSampler:
        self._cpu_start = time.process_time()
        signal.signal(signal.SIGPROF, self._sample)
        signal.setitimer(signal.ITIMER_PROF, self.interval, self.interval)
        return self

    def stop(self) -> None:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        signal.signal(signal.SIGPROF, signal.SIG_IGN)
        self.cpu_seconds = time.process_time() - self._cpu_start

    def dump(self, path: Path) -> None:
        data = {
            "interval": self.interval,
            "samples": self.samples,
            "cpu_seconds": self.cpu_seconds,
            "own": dict(self.own),
            "total": dict(self.total),
        }
        path.write_text(json.dumps(data), encoding="utf-8")
