"""Scaling out on Celery, black-box (issue 14): API processes accept, Celery worker processes
send, every one a real process on real servers (redis-server, RabbitMQ, an aiosmtpd sink).

Each burst is counted at the sink by Message-ID (`<request_id@domain>`, the same on every try),
so "exactly once" means that every accepted request's Message-ID arrived and none twice, and
the store says `sent` for each.

Workers run with `--concurrency 2`, although the machine has 2 cores. A worker child spends
most of a task's time waiting, not sending: with `task_acks_late` and a prefetch of one, the
main process fetches a child's next task only once the last one is acknowledged, and hands it
over through a pipe; a second child per worker overlaps that wait. On this machine two workers
of two children delivered the 2,000 roughly 1.5 to 2 times as fast as two workers of one child
(the child of a one-child worker was idle most of the time).

The time-outs are short so that a crash costs seconds, not minutes: a visibility timeout of
12 s (a Redis broker puts back the task of a killed worker that had not taken its request
over) above a hard time limit of 10 s, itself far above the longest attempt on the loopback
sink (SMTP_TIMEOUT=4, SMTP_DATA_TIMEOUT=6: only a hung sink reaches them). LEASE_SECONDS=10
(another process's recovery takes up a dead child's `sending` request after it) is not
shorter: on this machine, shared with other people's tests and benches, whole seconds pass in
which no process runs; with a lease of 3 s live workers lost theirs in such a pause, and their
requests in DATA were taken up and sent twice, as a lease that runs out is meant to allow.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis

from mailservice.stores import store_from_url
from mailservice.stores.contract import EmailStatus, StatusRecord
from mailservice.testing.burst import Burst, arrived
from mailservice.testing.celery_worker import CeleryWorker, FlowerProcess
from mailservice.testing.rabbitmq import RabbitVhost, require_rabbitmq
from mailservice.testing.redis_server import RedisServer
from mailservice.testing.service_process import ROOT, ServiceProcess
from mailservice.testing.smtp_servers import SmtpServer
from tests.conftest import API_KEY, wait_for, write_senders

pytestmark = pytest.mark.redis

BURST = 2000
BATCHED = 800  # of a burst, in batches of 50: more than half are single sends
CONCURRENCY = 2  # children per worker: see the module's docstring
# Bounds on waiting, never expectations: a burst on this machine takes seconds.
BURST_SECONDS = 120.0
ARRIVAL_TIMEOUT = 120.0
ENV = {
    "DISPATCHER": "celery",
    "LEASE_SECONDS": "10",
    "CELERY_VISIBILITY_TIMEOUT": "12",
    "CELERY_TASK_TIME_LIMIT": "10",
    "SMTP_TIMEOUT": "4",
    "SMTP_DATA_TIMEOUT": "6",
    "DRAIN_SECONDS": "5",
    "RATE_LIMIT": "",
    "PIN_CPUS": "0",
}
QUEUE = "mail"  # the Redis broker's list of task messages (celery_app.QUEUE)
OUTAGE_DOWN = "broker unreachable:"  # delivery/handoff.py's two lines
OUTAGE_UP = "broker reachable again"


class Cluster:
    """API processes and Celery workers of one test on one store and broker, all ended with
    the test (the workers killed: nothing of theirs is waited for any more)."""

    def __init__(self, workdir: Path, sink: SmtpServer, store_url: str, broker_url: str) -> None:
        self.workdir = workdir
        self.sink = sink
        self.store_url = store_url
        self.broker_url = broker_url
        senders = write_senders(workdir / "data.csv", sink.port)
        self.env = {
            **ENV,
            "SENDERS_FILE": str(senders),
            "STATUS_STORE_URL": store_url,
            "CELERY_BROKER_URL": broker_url,
        }
        self.apis: list[ServiceProcess] = []
        self.workers: list[CeleryWorker] = []

    def start_apis(self, count: int) -> list[ServiceProcess]:
        first = len(self.apis)
        apis = [
            ServiceProcess(self.workdir, {**self.env, "EMAIL_LOG": self._email_log(f"api{i}")})
            for i in range(first, first + count)
        ]
        self.apis.extend(apis)
        start_together(apis)
        return apis

    def start_workers(
        self, *names: str, concurrency: int = CONCURRENCY, pool: str = "prefork"
    ) -> list[CeleryWorker]:
        workers = [
            CeleryWorker(
                self.workdir,
                {**self.env, "EMAIL_LOG": self._email_log(name)},
                concurrency=concurrency,
                name=name,
                pool=pool,
            )
            for name in names
        ]
        self.workers.extend(workers)
        start_together(workers)
        return workers

    def _email_log(self, name: str) -> str:
        return str(self.workdir / f"email-{name}.log")

    def burst(self, total: int = BURST, batched: int = BATCHED) -> Burst:
        """A burst over every API process, started."""
        ports = [api.port for api in self.apis]
        return Burst(ports, API_KEY, total, batched=batched, deadline=BURST_SECONDS).start()

    def records(self, request_ids: list[str]) -> dict[str, StatusRecord | None]:
        store = store_from_url(self.store_url, 3600)
        try:
            return {request_id: store.get(request_id) for request_id in request_ids}
        finally:
            store.close()

    def wait_delivered(self, request_ids: list[str]) -> Counter[str]:
        """Wait until every request arrived at the sink and is `sent` in the store; how many
        times each request id arrived by then."""
        expected = set(request_ids)

        def missing() -> list[str]:
            return sorted(expected - arrived(self.sink.received).keys())

        def not_sent() -> list[str]:
            records = self.records(request_ids)
            return [i for i, r in records.items() if r is None or r.status != EmailStatus.SENT]

        for what, left in (("never arrived", missing), ("not sent", not_sent)):
            try:
                wait_for(lambda: not left(), timeout=ARRIVAL_TIMEOUT, interval=0.2)  # noqa: B023
            except AssertionError:
                ids = left()
                raise AssertionError(f"{len(ids)} {what}: {self.explain(ids)}") from None
        return arrived(self.sink.received)

    def explain(self, request_ids: list[str]) -> str:
        """For a failure: what the store, the request logs and the broker say of the first few
        of these requests, and the tails of the processes' logs."""
        lines = []
        for request_id, record in self.records(request_ids[:3]).items():
            lines.append(f"{request_id}: {record}")
            for log in sorted(self.workdir.glob("email-*.log")):
                lines += [
                    f"  {log.name}: {ln}" for ln in log.read_text().splitlines() if request_id in ln
                ]
        if self.broker_url.startswith("redis:"):
            broker = redis.Redis.from_url(self.broker_url, socket_timeout=2)
            try:
                lines.append(
                    f"broker: {broker.llen(QUEUE)} queued, {broker.hlen('unacked')} unacked"
                )
            except redis.RedisError as exc:
                lines.append(f"broker: {exc!r}")
            finally:
                broker.close()
        for process in [*self.apis, *self.workers]:
            lines.append(f"--- {process.log_path.name}\n{process.log_tail(15)}")
        return "\n".join(lines)

    def stop(self) -> None:
        for worker in self.workers:
            worker.kill()
        for api in self.apis:
            api.stop(timeout=15)


def start_together(processes: list[Any]) -> None:
    """Start processes in parallel: each spends its start-up importing, on a core of its own."""
    with ThreadPoolExecutor(len(processes)) as pool:
        for future in [pool.submit(process.start) for process in processes]:
            future.result()


def owner_pid(owner: str) -> int:
    """The process id in a lease owner's name, `host:pid:random` (delivery/dispatcher.py)."""
    return int(owner.split(":")[1])


def duplicates(counts: Counter[str]) -> dict[str, int]:
    return {request_id: n for request_id, n in counts.items() if n > 1}


def all_accepted(burst: Burst, total: int) -> list[str]:
    """The burst's request ids, once every one of its `total` sends was answered 202."""
    result = burst.join()
    assert result.refusals == []
    assert len(set(result.request_ids)) == len(result.request_ids) == total
    return result.request_ids


@pytest.fixture
def sink() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture
def store_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """The store (db 0) and, unless a test brings a broker of its own, the broker (db 1)."""
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def make_cluster(
    tmp_path: Path, sink: SmtpServer, store_redis: RedisServer
) -> Iterator[Callable[[str], Cluster]]:
    clusters: list[Cluster] = []

    def make(broker_url: str = "") -> Cluster:
        broker_url = broker_url or store_redis.url.replace("/0", "/1")
        cluster = Cluster(tmp_path, sink, store_redis.url, broker_url)
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop()


@pytest.fixture
def rabbit_vhost() -> Iterator[RabbitVhost]:
    """A vhost of this test's own on the machine's RabbitMQ, deleted after it."""
    vhost = RabbitVhost(require_rabbitmq()).start()
    yield vhost
    vhost.stop()


# -- bursts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("broker", ["redis", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def test_a_burst_over_two_apis_and_two_workers_arrives_exactly_once(
    make_cluster: Callable[[str], Cluster], request: pytest.FixtureRequest, broker: str
) -> None:
    broker_url = request.getfixturevalue("rabbit_vhost").url if broker == "rabbitmq" else ""
    cluster = make_cluster(broker_url)
    cluster.start_apis(2)
    workers = cluster.start_workers("w1", "w2")
    ids = all_accepted(cluster.burst(), BURST)
    counts = cluster.wait_delivered(ids)
    assert duplicates(counts) == {}
    assert set(counts) == set(ids)  # nothing arrived that was not accepted
    # Both workers sent a share: the last owner of a sent request is the child that sent it.
    owners = Counter(owner_pid(r.owner) for r in cluster.records(ids).values() if r is not None)
    for worker in workers:
        assert sum(owners[pid] for pid in worker.children()) > 0, worker.log_tail()


def test_a_worker_killed_mid_burst_loses_nothing(make_cluster: Callable[[str], Cluster]) -> None:
    cluster = make_cluster("")
    cluster.start_apis(2)
    killed, _survivor = cluster.start_workers("w1", "w2")
    burst = cluster.burst()
    sink = cluster.sink
    wait_for(lambda: len(sink.received) >= 500, timeout=ARRIVAL_TIMEOUT, interval=0.02)
    # The next DATAs are kept at once and answered late, so that the kill finds a child of the
    # killed worker in DATA, the one case that may send twice. Bounded: 6 messages held 3 s
    # (below SMTP_DATA_TIMEOUT: the sender waits for the answer).
    start = len(sink.received)
    sink.handler.script("DATA", *[("KEEP", 3.0)] * 6)
    pool = set(killed.children())

    def held_in_killed() -> set[str]:
        kept = list(arrived(sink.received[start:]))
        return {
            request_id
            for request_id, r in cluster.records(kept).items()
            if r is not None and r.status == EmailStatus.SENDING and owner_pid(r.owner) in pool
        }

    held = wait_for(held_in_killed, timeout=30, interval=0.05)
    assert killed.kill() == -9  # the whole group at once: main process and children
    arrived_before_kill = set(arrived(sink.received))
    # Its supervisor starts it again (new children: the old ones' leases run out all the same),
    # so that the rest of the burst does not wait on the survivor alone.
    killed.start()
    ids = all_accepted(burst, BURST)
    # The dead children's `sending` requests are taken up after their lease by another process;
    # a task not taken over yet is put back after the visibility timeout.
    counts = cluster.wait_delivered(ids)
    assert set(counts) == set(ids)
    twice = duplicates(counts)
    # Only what was in DATA at the kill arrives again, at most one per child of the killed
    # worker, and no more than twice; what it had in DATA did (recovered: a second attempt).
    assert len(twice) <= killed.concurrency, twice
    assert set(twice.values()) <= {2}, twice
    assert held <= set(twice) <= arrived_before_kill, (held, twice)
    records = cluster.records(list(twice))
    assert all(r is not None and r.attempts == 2 for r in records.values()), records


# -- the broker away ------------------------------------------------------------------------


def test_requests_accepted_while_the_broker_is_down_are_sent_once_it_is_back(
    tmp_path: Path, make_cluster: Callable[[str], Cluster]
) -> None:
    folder = tmp_path / "broker"
    folder.mkdir()
    broker = RedisServer(folder, appendonly=True).start()  # keeps its queue across a restart
    try:
        cluster = make_cluster(broker.url)
        (api,) = cluster.start_apis(1)
        cluster.start_workers("w1")
        warm = all_accepted(cluster.burst(total=5, batched=0), 5)
        cluster.wait_delivered(warm)

        broker.stop()
        accepted = all_accepted(cluster.burst(total=200, batched=100), 200)
        wait_for(lambda: OUTAGE_DOWN in api.output, timeout=30)
        records = cluster.records(accepted)
        assert all(r is not None and r.status == EmailStatus.QUEUED for r in records.values())
        assert len(cluster.sink.received) == len(warm)  # nothing is sent without the broker
        broker.start()  # the same port, the same append-only file

        counts = cluster.wait_delivered(warm + accepted)
        assert duplicates(counts) == {}
        assert set(counts) == set(warm + accepted)
        lines = api.output.splitlines()
        assert len([line for line in lines if OUTAGE_DOWN in line]) == 1, api.log_tail(40)
        assert len([line for line in lines if OUTAGE_UP in line]) == 1, api.log_tail(40)
    finally:
        broker.stop()


# -- stopping a worker ----------------------------------------------------------------------


# The threads pool builds its one delivery stack in the worker's main process, at its first
# task, and drains it at the worker's shutdown (mailservice/celery_worker.py).
@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_sigterm_lets_the_attempts_in_progress_finish_and_leaves_the_rest_on_the_broker(
    make_cluster: Callable[[str], Cluster], store_redis: RedisServer, pool: str
) -> None:
    cluster = make_cluster("")
    cluster.start_apis(1)
    (first,) = cluster.start_workers("w1", pool=pool)
    sink = cluster.sink
    total = 500
    # A slow sink: each message is kept at once and its 250 comes 0.5 s later, so attempts are
    # in DATA when the SIGTERM comes. Bounded: one pause per message at most.
    sink.handler.script("DATA", *[("KEEP", 0.5)] * total)
    burst = cluster.burst(total=total, batched=0)

    def in_progress() -> list[str]:
        records = cluster.records(burst.accepted)
        return [i for i, r in records.items() if r is not None and r.status == EmailStatus.SENDING]

    wait_for(lambda: len(sink.received) >= 3, timeout=60)
    sending = wait_for(in_progress, timeout=30, interval=0.05)
    assert first.stop() == 0  # the warm shutdown waits for them and exits cleanly
    assert "worker process stopped" in first.output  # its stack drained, its lease given up
    sink.handler.scripts["DATA"].clear()  # the rest may go fast
    sent_by_first = arrived(sink.received)
    # The attempts in progress finished: their messages arrived once, and they are `sent`.
    assert all(sent_by_first[i] == 1 for i in sending), sending
    records = cluster.records(sending)
    assert all(r is not None and r.status == EmailStatus.SENT for r in records.values()), records

    ids = all_accepted(burst, total)
    # The rest waits on the broker: one task for each request not sent, none unacknowledged.
    broker = redis.Redis.from_url(cluster.broker_url)
    try:
        left = total - len(sent_by_first)
        wait_for(lambda: broker.llen(QUEUE) == left, timeout=30, interval=0.1)
        assert broker.hlen("unacked") == 0
    finally:
        broker.close()
    assert arrived(sink.received) == sent_by_first  # nobody sends now

    cluster.start_workers("w2", pool=pool)
    counts = cluster.wait_delivered(ids)
    assert duplicates(counts) == {}
    assert set(counts) == set(ids)


# -- Flower ---------------------------------------------------------------------------------


def flower_get(flower: FlowerProcess, path: str, credentials: str | None) -> tuple[int, bytes]:
    headers = {}
    if credentials is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", flower.port, timeout=20)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_flower_behind_basic_auth_lists_our_worker(
    tmp_path: Path, make_cluster: Callable[[str], Cluster]
) -> None:
    cluster = make_cluster("")
    (worker,) = cluster.start_workers("w1")
    credentials = "ops:a-long-secret"
    flower = FlowerProcess(tmp_path, cluster.env, basic_auth=credentials)
    flower.start()
    try:
        assert flower_get(flower, "/", None)[0] == 401
        assert flower_get(flower, "/", "ops:wrong")[0] == 401
        assert flower_get(flower, "/", credentials)[0] == 200
        assert flower_get(flower, "/api/workers", None)[0] == 401

        def listed() -> list[str]:
            status, body = flower_get(flower, "/api/workers?refresh=1", credentials)
            names = list(json.loads(body)) if status == 200 else []
            return [name for name in names if name.startswith(f"{worker.name}@")]

        # Flower asks the workers over the broker (inspect): it may take a few tries.
        assert wait_for(listed, timeout=30, interval=0.5)
    finally:
        flower.stop()


# -- start-up refusals ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "prefix"),
    [
        ([str(ROOT / "mail_server.py")], "mail_server: configuration error: "),
        (["-m", "celery", "-A", "mailservice.celery_worker", "worker"], "mail worker: "),
    ],
    ids=["api", "worker"],
)
def test_celery_with_a_memory_store_is_refused_in_one_line(
    tmp_path: Path, command: list[str], prefix: str
) -> None:
    env = {
        **os.environ,
        **ENV,
        "STATUS_STORE_URL": "memory://",
        "CELERY_BROKER_URL": "redis://127.0.0.1:1/1",  # never reached: refused before
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, *command],
        cwd=tmp_path,  # no .env of anyone's
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr  # one line, no traceback
    assert done.stderr.startswith(prefix), done.stderr
    assert "configuration error: DISPATCHER=celery needs a store" in done.stderr
    assert "STATUS_STORE_URL=memory://" in done.stderr
