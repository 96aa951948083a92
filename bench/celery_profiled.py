"""The Celery worker under a profiler, for `python -m bench.run --celery-profile`: where a task's
time goes, in the main process (Celery's consumer: the broker, the pool, acks, events) and in
each prefork child (the task: the store, the SMTP transaction, Celery's tracing around it).

`celery -A bench.celery_profiled worker` is `mailservice.celery_worker` (imported whole, with
its task and signals), plus a profiler started in each process once that module has built the
process's stack, stopped at its shutdown, and dumped into `$BENCH_PROFILE_DIR` as
`<role>-<pid>.*`. `BENCH_PROFILE_CLOCK=cpu` (the default) samples CPU time (bench/sampler.py:
what bounds a machine whose cores are all busy, at a cost of a few per cent); `wall` runs
cProfile, which times every call by the wall clock, waits included (a child runs one task at a
time, so what it waits for bounds its rate), and slows calls down in proportion to how many
there are: its shares are a guide, not a measurement. Either sees the thread that runs the
consumer or the tasks; the row's CPU per role, in the JSON, is the measurement.
"""

from __future__ import annotations

import cProfile
import os
from pathlib import Path
from typing import Any

from celery import signals

from bench.sampler import CpuSampler
from mailservice.celery_worker import app, deliver  # noqa: F401  (the app `-A` finds)

_running: dict[str, cProfile.Profile | CpuSampler] = {}


def _begin(role: str) -> None:
    if os.environ.get("BENCH_PROFILE_CLOCK") == "wall":
        profile = cProfile.Profile()
        profile.enable()
        _running[role] = profile
    else:
        _running[role] = CpuSampler().start()


def _end(role: str) -> None:
    running = _running.pop(role, None)
    folder = os.environ.get("BENCH_PROFILE_DIR")
    if running is None or not folder:
        return
    if isinstance(running, CpuSampler):
        running.stop()
        running.dump(Path(folder) / f"{role}-{os.getpid()}.samples.json")
    else:
        running.disable()
        running.dump_stats(str(Path(folder) / f"{role}-{os.getpid()}.pstats"))


@signals.worker_init.connect
def _main_started(**_: Any) -> None:
    _begin("main")


@signals.worker_shutdown.connect
def _main_stopping(**_: Any) -> None:
    _end("main")


# Connected after mailservice.celery_worker's own handlers, so run after them: the child's
# stack is built before its profile starts, and drained (briefly: nothing is left) before its
# profile is written.
@signals.worker_process_init.connect
def _child_started(**_: Any) -> None:
    _begin("child")


@signals.worker_process_shutdown.connect
def _child_stopping(**_: Any) -> None:
    _end("child")
