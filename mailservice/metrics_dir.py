"""The folder of prometheus-client's multiprocess mode under gunicorn: made ready at the
master's start, before any worker, and removed at its exit when it was made here.

Each worker writes its metrics to files of its own there (`counter_<pid>.db`,
`gauge_livesum_<pid>.db`, ...), and a scrape merges them all. Files an earlier run left would
be merged too, and a new worker whose pid an old one had would go on from that one's counts,
so they are removed at start: the master's first start only. gunicorn runs its config file
again on a reload (SIGHUP), and by then PROMETHEUS_MULTIPROC_DIR, which the first run set,
reads as configured: emptying it then would delete the live workers' files (their counts gone),
and a temporary folder would be taken for the operator's and never removed. So the folder is
made ready once per process and a reload gets the same one back. prometheus-client reads
every `*.db` file in the folder as one of its own, and a scrape fails on one that is not: a
folder holding another `.db` (a SQLite status store's folder, say) is refused at start. This
module imports nothing of prometheus_client: the library picks its mode when it is first
imported, and PROMETHEUS_MULTIPROC_DIR must be set before that (gunicorn.conf.py sets it, and
the workers are forks of the master).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mailservice.errors import ConfigError

# The names prometheus-client gives its files (values.MultiProcessValue).
_METRIC_FILE = re.compile(r"(counter|histogram|summary|gauge_[a-z]+)_\d+\.db")


@dataclass(frozen=True, slots=True)
class MetricsDir:
    """The folder, absolute; `made`: a temporary folder made here, removed at exit."""

    path: str
    made: bool

    def remove(self) -> None:
        """Remove the folder if it was made here (the master's exit)."""
        if self.made:
            shutil.rmtree(self.path, ignore_errors=True)


# The folder this process made ready. It lives here, not in gunicorn.conf.py: gunicorn runs the
# config file as a new module on each reload, while this module stays imported (sys.modules).
_prepared: MetricsDir | None = None


def prepare_metrics_dir(configured: str) -> MetricsDir:
    """PROMETHEUS_MULTIPROC_DIR ready for the master's run: `configured` made if missing and
    emptied of an earlier run's metric files, or (empty) a fresh temporary folder; ConfigError
    naming the variable when it cannot be. A second call in the same process (gunicorn's
    reload) returns the first one's folder as it is, its files kept."""
    global _prepared
    if _prepared is None:
        _prepared = _prepare(configured)
    return _prepared


def _prepare(configured: str) -> MetricsDir:
    if not configured:
        return MetricsDir(tempfile.mkdtemp(prefix="mail-service-metrics-"), made=True)
    folder = Path(configured).resolve()  # absolute: the workers must find it from any cwd
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for entry in folder.glob("*.db"):
            if not _METRIC_FILE.fullmatch(entry.name):
                raise ConfigError(
                    f"PROMETHEUS_MULTIPROC_DIR={configured!r} holds {entry.name}, which is not a "
                    "metrics file: give prometheus-client a folder of its own"
                )
            entry.unlink()
    except OSError as exc:
        raise ConfigError(f"PROMETHEUS_MULTIPROC_DIR={configured!r} cannot be used: {exc}") from exc
    return MetricsDir(str(folder), made=False)
