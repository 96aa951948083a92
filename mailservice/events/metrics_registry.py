"""Where the service's metrics live and how a scrape reads them: one process, or several
gunicorn workers through prometheus-client's multiprocess mode.

`MetricsRegistry` makes the counters, histograms and gauges every part of the service
declares, and `render()` gives them in Prometheus's text format. Which mode it is in follows
prometheus-client itself, which chose when it was imported: with PROMETHEUS_MULTIPROC_DIR in
the environment (gunicorn.conf.py sets it before any worker starts), each process writes its
values to files of its own in that folder, and a scrape, answered by whichever worker, merges
every process's files. Without it (`python mail_server.py`) the values live in this registry,
one per app.

Multiprocess mode has limits (prometheus-client's docs, "Multiprocess Mode"): custom
collectors and `Gauge.set_function` read only the scraping process, and metrics must not be
registered in the registry the scrape collects. So a gauge that is state (queue depth, busy
threads, open connections: `StateGauge`) is read at scrape time by a collector in one process,
and in multiprocess mode is written by each process every SAMPLE_SECONDS (and by the scraping
one at the scrape) into a `livesum` gauge: the sum over the processes alive, a dead worker's
share removed by `mark_process_dead` (gunicorn.conf.py's `child_exit`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from mailservice.errors import ConfigError

logger = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # the text format generate_latest() writes
SAMPLE_SECONDS = 1.0  # multiprocess mode: how old another worker's state gauges may be


@dataclass(frozen=True, slots=True)
class StateGauge:
    """A gauge whose value is state read from the service (`read`), not counted. With a
    `label`, `read` gives a value for each label value (those it leaves out are 0)."""

    name: str
    documentation: str
    read: Callable[[], Any]
    label: str = ""

    def values(self) -> dict[tuple[str, ...], float]:
        if not self.label:
            return {(): float(self.read())}
        return {(key,): float(value) for key, value in self.read().items()}


def library_multiprocess() -> bool:
    """Whether prometheus-client chose its multiprocess values when it was imported."""
    return values.ValueClass is not values.MutexValue


class _StateCollector(Collector):
    """One process: each state gauge read at the scrape itself."""

    def __init__(self, gauges: Sequence[StateGauge]) -> None:
        self._gauges = list(gauges)

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(g.name, g.documentation) for g in self._gauges]

    def collect(self) -> Iterable[Metric]:
        families = []
        for gauge in self._gauges:
            if not gauge.label:
                families.append(GaugeMetricFamily(gauge.name, gauge.documentation, gauge.read()))
                continue
            family = GaugeMetricFamily(gauge.name, gauge.documentation, labels=[gauge.label])
            for labels, value in gauge.values().items():
                family.add_metric(list(labels), value)
            families.append(family)
        return families


class _StateSampler:
    """Multiprocess mode: this process's state gauges written to its file every `interval`
    seconds by a daemon thread of its own (for the life of the process: the state stays
    readable after a drain), and at once by `sample()`."""

    def __init__(self, gauges: Sequence[StateGauge], interval: float) -> None:
        # A labelled gauge is state every process reads alike (a sender's pause): the most
        # any live process says, not their sum.
        self._gauges = [
            (
                Gauge(
                    g.name, g.documentation, [g.label] if g.label else [], registry=None,
                    multiprocess_mode="livemax" if g.label else "livesum",
                ),
                g,
            )
            for g in gauges
        ]  # fmt: skip
        self._seen: dict[str, set[tuple[str, ...]]] = {g.name: set() for g in gauges}
        self._interval = interval
        self.sample()
        self._thread = threading.Thread(target=self._run, name="metrics-sampler", daemon=True)
        self._thread.start()

    def sample(self) -> None:
        for gauge, state in self._gauges:
            if not state.label:
                gauge.set(state.read())
                continue
            now = state.values()
            for labels in self._seen[state.name] - set(now):
                gauge.labels(*labels).set(0)  # gone from the state: 0, not its last value
            for labels, value in now.items():
                gauge.labels(*labels).set(value)
            self._seen[state.name] |= set(now)

    def _run(self) -> None:
        while True:
            time.sleep(self._interval)
            try:
                self.sample()
            except Exception:  # the thread's one catch-all: a bug must not end the sampling
                logger.exception("reading the state gauges failed")


class MetricsRegistry:
    """The app's metrics: made here, rendered by `render()`; see the module's docstring."""

    def __init__(self, multiprocess: bool | None = None) -> None:
        self.multiprocess = library_multiprocess() if multiprocess is None else multiprocess
        if self.multiprocess:
            try:  # the folder must be there before a metric writes its first value
                MultiProcessCollector(None)
            except ValueError as exc:
                raise ConfigError(f"PROMETHEUS_MULTIPROC_DIR: {exc}") from exc
        # Multiprocess mode: the metrics are in no registry; the scrape reads their files.
        self._registry = None if self.multiprocess else CollectorRegistry()
        self._sampler: _StateSampler | None = None

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        """A counter; `name` without `_total`, which the text format adds."""
        return Counter(name, documentation, labels, registry=self._registry)

    def histogram(
        self, name: str, documentation: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> Histogram:
        return Histogram(name, documentation, labels, registry=self._registry, buckets=buckets)

    def watch(self, gauges: Sequence[StateGauge]) -> None:
        """Expose state gauges, read at each scrape (sampled, in multiprocess mode)."""
        if self._registry is not None:
            self._registry.register(_StateCollector(gauges))
        elif self._sampler is None:
            self._sampler = _StateSampler(gauges, SAMPLE_SECONDS)
        else:
            raise ValueError("state gauges are watched once per registry")

    def render(self) -> bytes:
        """Every metric, in the text format (CONTENT_TYPE)."""
        if self._registry is not None:
            return generate_latest(self._registry)
        if self._sampler is not None:
            self._sampler.sample()  # this process's share is exact, the others' recent
        scrape = CollectorRegistry()
        MultiProcessCollector(scrape)
        return generate_latest(scrape)
