"""The profiles of a `--celery-profile` row (bench/celery_profiled.py: CPU samples, or cProfile
dumps), summed by role and cut down to what a reader needs: the functions that took the most
time, per message.

Times are by the clock the row chose (`--celery-profile cpu` or `wall`): a prefork child runs
one task at a time, so the time it waits (for the broker, the store, the SMTP server) bounds
its rate as much as the CPU it spends, until every core is busy. `own` is a function's own
time (tottime), `total` with what it called (cumtime), both in microseconds per message, with
the calls per message.
"""

from __future__ import annotations

import json
import pstats
from pathlib import Path
from typing import Any

TOP = 25


def _name(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    if filename == "~":  # a built-in: "<built-in method time.sleep>"
        return name
    parts = Path(filename).parts
    short = "/".join(
        parts[parts.index("site-packages") + 1 :] if "site-packages" in parts else parts[-2:]
    )
    return f"{short}:{line}({name})"


def _pstats_rows(files: list[Path], messages: int) -> list[dict[str, Any]]:
    stats = pstats.Stats(*(str(f) for f in files))
    return [
        {
            "function": _name(func),
            "calls_per_msg": round(calls / messages, 3),
            "own_us_per_msg": round(own * 1e6 / messages, 1),
            "total_us_per_msg": round(total * 1e6 / messages, 1),
        }
        for func, (_, calls, own, total, _) in stats.stats.items()  # type: ignore[attr-defined]
    ]


def _sample_rows(files: list[Path], messages: int) -> list[dict[str, Any]]:
    """Each sample weighs its process's CPU time over its samples (bench/sampler.py); the
    frames on (nearly) every sample with (nearly) no time of their own, the process's start-up
    chain, are left out."""
    own: dict[str, float] = {}
    total: dict[str, float] = {}
    cpu = 0.0
    for path in files:
        data = json.loads(path.read_text(encoding="utf-8"))
        weight = data["cpu_seconds"] / data["samples"] if data["samples"] else 0.0
        cpu += data["cpu_seconds"]
        for into, key in ((own, "own"), (total, "total")):
            for function, samples in data[key].items():
                into[function] = into.get(function, 0.0) + samples * weight
    return [
        {
            "function": function,
            "calls_per_msg": None,  # a sampler sees time, not calls
            "own_us_per_msg": round(own.get(function, 0.0) * 1e6 / messages, 1),
            "total_us_per_msg": round(seconds * 1e6 / messages, 1),
        }
        for function, seconds in total.items()
        if seconds < 0.97 * cpu or own.get(function, 0.0) > 0.01 * cpu
    ]


def summarize(folder: Path, messages: int, top: int = TOP) -> dict[str, Any]:
    """Per role (`main`, `child`): the processes profiled, the kind of profile, and the `top`
    functions by own time and by total time, per message."""
    out: dict[str, Any] = {}
    for role in ("main", "child"):
        samples = sorted(folder.glob(f"{role}-*.samples.json"))
        pstats_files = sorted(folder.glob(f"{role}-*.pstats"))
        if not messages or not (samples or pstats_files):
            continue
        if samples:
            kind, rows = "cpu samples", _sample_rows(samples, messages)
        else:
            kind, rows = "cProfile, wall clock", _pstats_rows(pstats_files, messages)
        out[role] = {
            "processes": len(samples or pstats_files),
            "kind": kind,
            "by_own": sorted(rows, key=lambda r: -r["own_us_per_msg"])[:top],
            "by_total": sorted(rows, key=lambda r: -r["total_us_per_msg"])[:top],
        }
    return out


def _calls(calls: float | None) -> str:
    return f"x{calls:<7g}" if calls is not None else " " * 8


def format_summary(name: str, summary: dict[str, Any], top: int = 12) -> str:
    """A few lines per role for stdout."""
    lines = []
    for role, figures in summary.items():
        lines.append(
            f"{name}: {figures['kind']} of {figures['processes']} {role} process(es), us/msg"
        )
        for key, figure in (("by_own", "own_us_per_msg"), ("by_total", "total_us_per_msg")):
            lines.append(f"  {key.removeprefix('by_')} time:")
            lines += [
                f"    {r[figure]:>9,.1f}  {_calls(r['calls_per_msg'])} {r['function']}"
                for r in figures[key][:top]
            ]
    return "\n".join(lines)
