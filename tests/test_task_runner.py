"""The Celery task's body without Celery: TaskRunner.run() on a real store (SQLite and Redis)
and a real SMTP server.

An API side (an Acceptor whose CeleryDispatcher, owner "api", publishes into a list) records
each request and hands it over; a worker side (its own CeleryDispatcher, owner "worker-1",
and a TaskRunner) runs the hand-over as a Celery worker child would.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailservice.delivery.accepting import Acceptor, RequestExtras
from mailservice.delivery.attempt import DeliveryAttempt
from mailservice.delivery.celery_dispatcher import CeleryDispatcher
from mailservice.delivery.handoff import Handover
from mailservice.delivery.message_spec import MessageSpec
from mailservice.delivery.smtp_client import SmtpClient
from mailservice.delivery.task_runner import TaskResult, TaskRunner
from mailservice.errors import StoreError
from mailservice.events.bus import EventBus
from mailservice.senders import Sender, SenderDirectory
from mailservice.stores import store_from_url
from mailservice.stores.contract import EmailStatus, StatusRecord, StatusStore
from mailservice.stores.sqlite_store import SqliteStatusStore
from mailservice.testing.redis_server import RedisServer
from mailservice.testing.smtp_servers import SmtpServer
from tests.conftest import API_KEY, SENDER, wait_for
from worker_pool import WorkerPool

WORKER = "worker-1"
RETRY_BACKOFF = 2.0  # with no jitter: a retry is handed over again 2 s after its attempt
SPEC = MessageSpec(recipient=("user@example.com",), subject="Hi", body="Hello")


class Published:
    """A `publish` callable: the hand-overs it was given, in order."""

    def __init__(self) -> None:
        self.handovers: list[Handover] = []
        self._lock = threading.Lock()

    def __call__(self, handover: Handover) -> None:
        with self._lock:
            self.handovers.append(handover)

    def __len__(self) -> int:
        with self._lock:
            return len(self.handovers)


@dataclass
class Deployment:
    """One API process and one worker process around a store and an SMTP server."""

    store: StatusStore
    smtp: SmtpServer
    sender: Sender
    acceptor: Acceptor
    api_published: Published
    worker: CeleryDispatcher
    worker_published: Published
    runner: TaskRunner

    def accept(self) -> str:
        """A request accepted by the API process; its id, once handed over from "api"."""
        record = self.acceptor.accept(SPEC, self.sender)
        assert isinstance(record, StatusRecord)
        handover = Handover(record.request_id, "api")
        wait_for(lambda: handover in self.api_published.handovers)
        return record.request_id


def attempt_on(store: StatusStore) -> DeliveryAttempt:
    return DeliveryAttempt(
        store,
        SmtpClient(5.0),
        EventBus(),
        max_attempts=3,
        retry_backoff=RETRY_BACKOFF,
        jitter=lambda low, high: 1.0,
    )


@pytest.fixture
def deploy(smtp_server: SmtpServer) -> Iterator[Callable[..., Deployment]]:
    """Build a Deployment on a store; drained (SMTP connections closed) before the server
    stops."""
    built: list[Deployment] = []

    def build(store: StatusStore, senders: SenderDirectory | None = None) -> Deployment:
        sender = Sender(SENDER, "", "127.0.0.1", smtp_server.port, "none")
        api_published, worker_published = Published(), Published()
        api = CeleryDispatcher(attempt_on(store), api_published, owner="api")
        worker = CeleryDispatcher(attempt_on(store), worker_published, owner=WORKER, threads=1)
        directory = SenderDirectory([(API_KEY, sender)]) if senders is None else senders
        deployment = Deployment(
            store,
            smtp_server,
            sender,
            Acceptor(store, api, api.attempt.events),
            api_published,
            worker,
            worker_published,
            TaskRunner(worker, directory),
        )
        built.append(deployment)
        return deployment

    yield build
    for deployment in built:
        deployment.runner.close(0)
        deployment.worker.drain(0)
        deployment.acceptor.dispatcher.drain(0)


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StatusStore]:
    if request.param == "sqlite":
        store = store_from_url(f"sqlite:///{tmp_path / 'status.db'}", 60)
    else:
        store = store_from_url(request.getfixturevalue("redis_server").url, 60)
    yield store
    store.close()


@pytest.fixture
def deployment(deploy: Callable[..., Deployment], store: StatusStore) -> Deployment:
    return deploy(store)


def message_ids(smtp: SmtpServer) -> list[str]:
    return [str(received.message["Message-ID"]) for received in smtp.received]


# -- one task, delivered once or twice ------------------------------------------------------


def test_a_handed_over_request_is_sent(deployment: Deployment) -> None:
    request_id = deployment.accept()
    assert deployment.runner.run(request_id, "api") is TaskResult.SENT
    assert message_ids(deployment.smtp) == [f"<{request_id}@example.com>"]
    record = deployment.store.get(request_id)
    assert record is not None and record.status is EmailStatus.SENT
    assert (record.attempts, record.error, record.owner) == (1, None, WORKER)
    assert deployment.worker.stats().busy == 0
    assert len(deployment.worker_published) == 0, "nothing more to hand over"


def test_a_task_delivered_twice_sends_once(deployment: Deployment) -> None:
    request_id = deployment.accept()
    assert deployment.runner.run(request_id, "api") is TaskResult.SENT
    sent = deployment.store.get(request_id)
    assert deployment.runner.run(request_id, "api") is TaskResult.SKIPPED  # redelivered
    assert len(deployment.smtp.received) == 1
    assert deployment.smtp.handler.transactions == 1
    assert deployment.store.get(request_id) == sent


def test_a_task_from_an_owner_that_no_longer_holds_the_request_does_nothing(
    deployment: Deployment,
) -> None:
    request_id = deployment.accept()
    before = deployment.store.get(request_id)
    assert deployment.runner.run(request_id, "some-other-process") is TaskResult.SKIPPED
    assert deployment.smtp.handler.transactions == 0
    assert deployment.store.get(request_id) == before, "the record is untouched"
    assert before is not None and before.owner == "api"


def test_a_task_for_an_unknown_request_does_nothing(deployment: Deployment) -> None:
    assert deployment.runner.run("no-such-request", "api") is TaskResult.SKIPPED
    assert deployment.smtp.handler.transactions == 0


# -- what the attempt came to ---------------------------------------------------------------


def test_a_transient_failure_is_saved_retrying_and_handed_over_again_after_the_backoff(
    deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    deployment.smtp.handler.script("DATA", "451 4.3.0 try later")
    request_id = deployment.accept()
    with caplog.at_level(logging.INFO, logger="mailservice.delivery.attempt"):
        assert deployment.runner.run(request_id, "api") is TaskResult.RETRY
    retrying = deployment.store.get(request_id)
    assert retrying is not None and retrying.status is EmailStatus.RETRYING
    assert retrying.owner == WORKER, "the runner's process owns it now"
    assert retrying.attempts == 1 and retrying.error.startswith("451 4.3.0 try later")
    # The backoff waits in this process, not on the broker.
    assert len(deployment.worker.handoff) == 1
    assert deployment.worker_published.handovers == [], "handed over before its backoff"
    wait_for(lambda: len(deployment.worker_published) == 1)
    assert deployment.worker_published.handovers == [Handover(request_id, WORKER)]
    # The same line as the thread pool's (delivery/attempt.py log_retry).
    lines = [r.getMessage() for r in caplog.records if r.name == "mailservice.delivery.attempt"]
    pattern = rf"attempt 1 failed request_id={request_id}: 451 4\.3\.0 try later.*; retry in 2\.0s"
    assert [line for line in lines if re.fullmatch(pattern, line)], lines

    assert deployment.runner.run(request_id, WORKER) is TaskResult.SENT
    record = deployment.store.get(request_id)
    assert record is not None and record.status is EmailStatus.SENT and record.attempts == 2
    assert len(deployment.smtp.received) == 1 and deployment.smtp.handler.transactions == 2
    assert deployment.runner.run(request_id, "api") is TaskResult.SKIPPED, "the first task again"
    assert len(deployment.smtp.received) == 1


def test_a_retry_is_logged_with_the_line_the_thread_pool_writes(
    deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    deployment.smtp.handler.script("DATA", "451 4.3.0 try later", "451 4.3.0 try later")
    pool = WorkerPool(attempt_on(deployment.store), workers=1, owner="pool")

    def retry_lines() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "mailservice.delivery.attempt" and "; retry in " in r.getMessage()
        ]

    try:
        with caplog.at_level(logging.INFO, logger="mailservice.delivery.attempt"):
            by_task = deployment.accept()
            assert deployment.runner.run(by_task, "api") is TaskResult.RETRY
            by_pool = Acceptor(deployment.store, pool, pool.attempt.events).accept(
                SPEC, deployment.sender
            )
            assert isinstance(by_pool, StatusRecord)
            wait_for(lambda: len(retry_lines()) == 2)
    finally:
        pool.drain(0)
    line = "attempt 1 failed request_id={}: 451 4.3.0 try later (at end of DATA); retry in 2.0s"
    assert retry_lines() == [line.format(by_task), line.format(by_pool.request_id)]


def test_a_permanent_failure_ends_failed_with_the_reason(deployment: Deployment) -> None:
    deployment.smtp.handler.script("DATA", "550 5.7.1 content rejected")
    request_id = deployment.accept()
    assert deployment.runner.run(request_id, "api") is TaskResult.FAILED
    record = deployment.store.get(request_id)
    assert record is not None and record.status is EmailStatus.FAILED
    assert record.error.startswith("550 5.7.1 content rejected") and record.attempts == 1
    assert deployment.smtp.received == []
    assert deployment.worker.handoff.flush(1) and len(deployment.worker_published) == 0


def test_a_possibly_delivered_earlier_attempt_is_carried_to_the_final_error(
    deployment: Deployment,
) -> None:
    # The thread pool keeps the flag in memory between attempts; with Celery it travels with
    # the hand-over, so that the final error says the same.
    deployment.smtp.handler.script("DATA", "451 4.3.0 try later", "550 5.7.1 content rejected")
    request_id = deployment.accept()
    assert deployment.runner.run(request_id, "api", possibly_delivered=True) is TaskResult.RETRY
    (handover,) = wait_for(lambda: deployment.worker_published.handovers)
    assert handover == Handover(request_id, WORKER, possibly_delivered=True)
    assert deployment.runner.run(request_id, WORKER, handover.possibly_delivered) is (
        TaskResult.FAILED
    )
    record = deployment.store.get(request_id)
    assert record is not None and "possibly delivered (same Message-ID)" in (record.error or "")


def test_a_sender_no_longer_configured_ends_failed_and_sends_nothing(
    deploy: Callable[..., Deployment], store: StatusStore
) -> None:
    deployment = deploy(store, senders=SenderDirectory([]))  # the worker's senders file lost it
    request_id = deployment.accept()
    assert deployment.runner.run(request_id, "api") is TaskResult.FAILED
    record = deployment.store.get(request_id)
    assert record is not None and record.status is EmailStatus.FAILED
    assert record.error == "its sender is no longer configured"
    assert record.owner == WORKER
    assert deployment.smtp.handler.transactions == 0


# -- the store refusing -------------------------------------------------------------------------


@pytest.mark.redis
def test_a_store_that_is_down_at_take_raises_and_nothing_is_sent(
    deploy: Callable[..., Deployment], tmp_path: Path
) -> None:
    redis_server = RedisServer(tmp_path, appendonly=True).start()  # survives its restart
    store = store_from_url(redis_server.url, 60)
    try:
        deployment = deploy(store)
        request_id = deployment.accept()
        redis_server.stop()
        with pytest.raises(StoreError):
            deployment.runner.run(request_id, "api")
        assert deployment.smtp.handler.transactions == 0
        redis_server.start()
        record = store.get(request_id)
        assert record is not None and (record.status, record.owner) == (EmailStatus.QUEUED, "api")
        assert deployment.runner.run(request_id, "api") is TaskResult.SENT  # the task again
        assert len(deployment.smtp.received) == 1
    finally:
        store.close()
        redis_server.stop()


class RefusingStore(SqliteStatusStore):
    """Refuses the first save of a final status, as a store that is briefly away would (the
    pattern of tests/test_webhooks.py's RefusingStore)."""

    refusals = 1

    def save(self, record: StatusRecord) -> bool:
        if record.status.final and self.refusals:
            self.refusals -= 1
            raise StoreError("database is locked")
        return super().save(record)


def test_a_final_status_the_store_refuses_is_kept_and_saved_later(
    deploy: Callable[..., Deployment], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = RefusingStore(str(tmp_path / "status.db"), 60)
    try:
        deployment = deploy(store)
        request_id = deployment.accept()
        with caplog.at_level(logging.WARNING, logger="mailservice.delivery.store_retry"):
            assert deployment.runner.run(request_id, "api") is TaskResult.SENT
            assert store.refusals == 0, "the final save was refused once"
            wait_for(lambda: store.get(request_id).status is EmailStatus.SENT)
        assert len(deployment.smtp.received) == 1
        assert "the status store refused a status write" in caplog.text
        assert deployment.runner.run(request_id, "api") is TaskResult.SKIPPED
        assert len(deployment.smtp.received) == 1
    finally:
        store.close()


def test_a_broker_outage_refuses_neither_singles_nor_batches(tmp_path: Path) -> None:
    # API.md section 13: 503 only when the store is down or the process drains. More requests
    # than QUEUE_MAX waiting for the broker must not make a batch 503 either.
    def broker_down(handover: Handover) -> None:
        raise ConnectionRefusedError("broker down")

    store = store_from_url(f"sqlite:///{tmp_path / 'status.db'}", 60)
    api = CeleryDispatcher(attempt_on(store), broker_down, queue_max=3, owner="api")
    acceptor = Acceptor(store, api, api.attempt.events)
    sender = Sender(SENDER, "", "127.0.0.1", 25, "none")
    try:
        for _ in range(4):
            assert isinstance(acceptor.accept(SPEC, sender), StatusRecord)
        batch = acceptor.accept_many([(SPEC, RequestExtras()), (SPEC, RequestExtras())], sender)
        assert isinstance(batch, list) and all(isinstance(r, StatusRecord) for r in batch)
        assert len(api.handoff) == 6  # all recorded, all waiting for the broker
    finally:
        api.drain(0)
        store.close()
