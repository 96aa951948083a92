"""A Celery worker's metrics (WORKER_METRICS_PORT): its prefork children's values, summed, at
HOST:WORKER_METRICS_PORT/metrics, served by the worker's main process.

The children write prometheus-client's multiprocess files, as gunicorn's workers do
(metrics_dir.py). `start()` runs in the main process when the worker starts (Celery's
`worker_init`), before any child is forked: it makes the folder ready, sets
PROMETHEUS_MULTIPROC_DIR and switches prometheus-client's value class to the multiprocess one
(the library chose its mode when first imported, and Celery's own plugins, Flower's among them,
may have imported it before our module), so that every child, a fork, writes files. Only the
worker command does this: `celery -A mailservice.celery_worker flower` or `inspect` import the
same module and must not empty a running worker's folder. A child that dies without saying so
(SIGKILL, the hard time limit) leaves its gauge files; a thread here removes them for pids that
are gone, so that a dead child's busy threads do not count on. `stop()` removes a folder made
here.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path

from mailservice.config import Settings
from mailservice.metrics_dir import MetricsDir, prepare_metrics_dir

logger = logging.getLogger(__name__)

REAP_SECONDS = 5.0
_GAUGE_FILE = re.compile(r"gauge_live[a-z]*_(\d+)\.db")


class WorkerMetrics:
    """The main process's metrics server and the folder it reads."""

    def __init__(self, folder: MetricsDir) -> None:
        self.folder = folder
        self._stop = threading.Event()

    @classmethod
    def start(cls, settings: Settings) -> WorkerMetrics:
        folder = prepare_metrics_dir(settings.prometheus_multiproc_dir)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder.path
        from prometheus_client import CollectorRegistry, multiprocess, start_http_server, values

        values.ValueClass = values.get_value_class()  # multiprocess, now that the folder is set
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, folder.path)
        start_http_server(settings.worker_metrics_port, settings.host, registry)
        metrics = cls(folder)
        threading.Thread(target=metrics._reap, name="metrics-reaper", daemon=True).start()
        logger.info("metrics on http://%s:%d/metrics", settings.host, settings.worker_metrics_port)
        return metrics

    def _reap(self) -> None:
        from prometheus_client import multiprocess

        while not self._stop.wait(REAP_SECONDS):
            for pid in dead_pids(Path(self.folder.path)):
                multiprocess.mark_process_dead(pid, self.folder.path)

    def stop(self) -> None:
        self._stop.set()
        self.folder.remove()


def dead_pids(folder: Path) -> set[int]:
    """Pids with live-gauge files in `folder` whose process is gone."""
    pids = {int(m.group(1)) for p in folder.glob("*.db") if (m := _GAUGE_FILE.fullmatch(p.name))}
    gone = set()
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            gone.add(pid)
        except PermissionError:
            continue  # alive, another user's
    return gone
