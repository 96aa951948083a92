"""Scheduled sends and expiry (API.md section 3, "Scheduled sends and expiry"), on every store
with real servers: not sent before send_at, sent when due, across a restart of the process and
when it fell due while none ran; no room taken until due; expiry reached while the SMTP server
is down, and a scheduled request taken after its expiry; the due scheduler on its own; and a
scheduled send through both dispatchers (a real Celery worker)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from mail_server import EXTENSION
from mailservice.delivery.attempt import DeliveryAttempt
from mailservice.delivery.message_spec import MessageSpec
from mailservice.delivery.scheduler import DueScheduler
from mailservice.delivery.smtp_client import SmtpClient
from mailservice.events.bus import EventBus, Finished
from mailservice.senders import Sender, SenderDirectory
from mailservice.stores.contract import EmailStatus, StatusRecord, utcnow
from mailservice.stores.memory_store import MemoryStatusStore
from mailservice.testing.ports import free_port
from mailservice.testing.smtp_servers import SmtpServer
from mailservice.testing.webhook_receiver import WebhookReceiver
from tests.conftest import API_KEY, SENDER, send, wait_final, wait_for
from tests.test_send_path import message, path, redis_module  # noqa: F401 (fixtures)
from worker_pool import WorkerPool

SECRET = "schedule-webhook-secret"


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return store_url_of(request, tmp_path)


@pytest.fixture(params=["sqlite", "redis"])
def durable_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return store_url_of(request, tmp_path)


def store_url_of(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'status.db'}"
    return request.getfixturevalue("redis_server").url


def at(seconds: float) -> str:
    """A moment `seconds` from now, as a client writes it."""
    return (utcnow() + timedelta(seconds=seconds)).isoformat()


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text)


def status_of(client: FlaskClient, request_id: str) -> dict[str, Any]:
    return client.get(f"/email-status/{request_id}").get_json()


def arrived(server: SmtpServer, request_id: str) -> int:
    """How many messages of this request the server got (every attempt shares its id)."""
    wanted = f"<{request_id}@example.com>"
    return sum(1 for got in list(server.received) if got.message["Message-ID"] == wanted)


def passed(when: datetime) -> None:
    """Wait until the clock has passed `when` (what a test that checks "not yet" waits for)."""
    wait_for(lambda: utcnow() > when, timeout=30, interval=0.05)


def history_of(app: Flask, request_id: str) -> list[tuple[str, datetime]]:
    record = app.extensions[EXTENSION].store.get(request_id)
    assert record is not None
    return [(str(entry.status), entry.at) for entry in record.history]


def log_statuses(app: Flask, request_id: str) -> list[str]:
    service = app.extensions[EXTENSION]
    service.request_log.flush()
    text = Path(service.settings.email_log).read_text(encoding="utf-8")
    return [ln.rsplit("Status: ", 1)[1] for ln in text.splitlines() if request_id in ln]


def scheduled_send(client: FlaskClient, send_at: str, **fields: Any) -> str:
    body = {"recipient": "user@example.com", "subject": "Later", "body": "Hi", "send_at": send_at}
    answer = send(client, {**body, **fields})
    assert answer.status_code == 202, answer.get_json()
    assert answer.get_json()["status"] == "scheduled"
    return answer.get_json()["request_id"]


def stop(app: Flask) -> None:
    """What a process does at SIGTERM, with nothing to drain: its scheduler stops first."""
    app.extensions[EXTENSION].shutdown(0)


# -- through the API, on every store ---------------------------------------------------------


def test_a_scheduled_send_is_not_sent_early_and_is_sent_when_due(
    make_app: Callable[..., Flask], smtp_server: SmtpServer, store_url: str
) -> None:
    app = make_app(smtp_server.port, status_store_url=store_url)
    client = app.test_client()
    request_id = scheduled_send(client, at(3))
    status = status_of(client, request_id)
    assert status["status"] == "scheduled" and status["attempts"] == 0
    send_at = moment(status["send_at"])
    assert status["send_at"].endswith("Z") and status["expires_at"] is None
    passed(moment(status["created_at"]) + timedelta(seconds=1))
    assert status_of(client, request_id)["status"] == "scheduled"
    assert arrived(smtp_server, request_id) == 0, "nothing before its time"
    assert wait_final(client, request_id, timeout=20)["status"] == "sent"
    assert arrived(smtp_server, request_id) == 1
    history = history_of(app, request_id)
    assert [status for status, _ in history] == ["scheduled", "queued", "sending", "sent"]
    assert history[1][1] >= send_at, "taken when due, not before"
    assert wait_for(lambda: (got := log_statuses(app, request_id)) and len(got) == 2 and got) == [
        "scheduled",
        "sent",
    ]


def test_a_send_at_now_or_past_is_sent_at_once(
    make_app: Callable[..., Flask], smtp_server: SmtpServer
) -> None:
    client = make_app(smtp_server.port).test_client()
    answer = send(client, {"to": "user@example.com", "subject": "s", "body": "b",
                           "send_at": "2020-01-01T00:00:00+02:00"})  # fmt: skip
    assert answer.status_code == 202 and answer.get_json()["status"] == "queued"
    status = wait_final(client, answer.get_json()["request_id"])
    assert status["status"] == "sent"
    assert status["send_at"] == "2019-12-31T22:00:00Z", "as given, in UTC"


def test_scheduled_requests_take_no_room_until_due(
    make_app: Callable[..., Flask], smtp_server: SmtpServer, store_url: str
) -> None:
    app = make_app(smtp_server.port, status_store_url=store_url, queue_max=1)
    client = app.test_client()
    later = [scheduled_send(client, at(120)) for _ in range(3)]
    batch = client.post(
        "/send-email/batch",
        json={"messages": [message(send_at=at(120)), message(send_at=at(120))]},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert batch.status_code == 202, batch.get_json()
    assert [item["status"] for item in batch.get_json()["messages"]] == ["scheduled"] * 2
    answer = send(client)
    assert answer.status_code == 202, "the scheduled ones hold no place of QUEUE_MAX"
    assert wait_final(client, answer.get_json()["request_id"])["status"] == "sent"
    assert all(status_of(client, request_id)["status"] == "scheduled" for request_id in later)
    counts = app.extensions[EXTENSION].store.counts()
    assert counts[EmailStatus.SCHEDULED] == 5


def test_expiry_reached_while_the_smtp_server_is_down_ends_expired_never_sent(
    make_app: Callable[..., Flask], store_url: str, start_smtp: Callable[..., SmtpServer]
) -> None:
    port = free_port()  # nothing listens: every attempt fails to connect, transiently
    receiver = WebhookReceiver(SECRET).start()
    try:
        app = make_app(
            port, status_store_url=store_url, retry_backoff=0.2, max_attempts=50,
            webhook_secret=SECRET, webhook_allow_private=True,
        )  # fmt: skip
        client = app.test_client()
        answer = send(client, {"to": "user@example.com", "subject": "Code 482913",
                               "body": "Your code", "expires_at": at(2),
                               "callback_url": receiver.url()})  # fmt: skip
        assert answer.status_code == 202 and answer.get_json()["status"] == "queued"
        request_id = answer.get_json()["request_id"]
        status = wait_final(client, request_id, timeout=30)
        assert status["status"] == "expired", status
        assert status["error"].startswith("expired: ") and status["attempts"] >= 1
        line = f"expired ({status['error']})"
        assert wait_for(lambda: log_statuses(app, request_id)[-1:] == [line])
        hit = wait_for(lambda: receiver.hits)[0]
        assert hit.signed and hit.json["event"] == "email.expired"
        assert hit.json["request_id"] == request_id
        # The server comes up: a later request goes through it, the expired one never does.
        server = start_smtp(port=port)
        later = send(client).get_json()["request_id"]
        assert wait_final(client, later, timeout=30)["status"] == "sent"
        assert arrived(server, later) == 1 and arrived(server, request_id) == 0
        assert status_of(client, request_id)["status"] == "expired"
    finally:
        receiver.stop()


def test_bad_times_are_400_naming_the_field(
    make_app: Callable[..., Flask], smtp_server: SmtpServer
) -> None:
    client = make_app(smtp_server.port, max_schedule_days=2).test_client()
    cases = [
        ({"send_at": "2026-12-01T09:00:00"}, "send_at", "offset"),
        ({"send_at": 1767225600}, "send_at", "string"),
        ({"send_at": "tomorrow"}, "send_at", "ISO 8601"),
        ({"send_at": at(3 * 86400)}, "send_at", "MAX_SCHEDULE_DAYS"),
        ({"expires_at": at(-1)}, "expires_at", "future"),
        ({"send_at": at(60), "expires_at": at(30)}, "expires_at", "after send_at"),
        ({"expires_at": "2026-12-01T09:00:00"}, "expires_at", "offset"),
    ]
    for fields, field, words in cases:
        answer = send(client, {"to": "user@example.com", "subject": "s", "body": "b", **fields})
        assert answer.status_code == 400, fields
        [error] = answer.get_json()["errors"]
        assert error["field"] == field and words in error["message"], (fields, error)
    assert smtp_server.received == []


def test_a_repeat_says_scheduled_while_send_at_is_ahead(
    make_app: Callable[..., Flask], smtp_server: SmtpServer
) -> None:
    client = make_app(smtp_server.port).test_client()
    body = {"to": "user@example.com", "subject": "s", "body": "b", "send_at": at(60)}
    first = send(client, body, headers={"Idempotency-Key": "sched-1"})
    again = send(client, body, headers={"Idempotency-Key": "sched-1"})
    assert first.get_json() == again.get_json()
    assert again.get_json()["status"] == "scheduled"


# -- across processes, on the durable stores -------------------------------------------------


def test_a_scheduled_send_is_sent_by_the_next_process_after_a_restart(
    make_app: Callable[..., Flask], smtp_server: SmtpServer, durable_url: str
) -> None:
    first = make_app(smtp_server.port, status_store_url=durable_url)
    request_id = scheduled_send(first.test_client(), at(3))
    stop(first)
    second = make_app(smtp_server.port, status_store_url=durable_url)
    client = second.test_client()
    assert status_of(client, request_id)["status"] == "scheduled"
    assert wait_final(client, request_id, timeout=20)["status"] == "sent"
    assert arrived(smtp_server, request_id) == 1
    send_at = moment(status_of(client, request_id)["send_at"])
    history = history_of(second, request_id)
    assert [status for status, _ in history] == ["scheduled", "queued", "sending", "sent"]
    assert history[1][1] >= send_at
    record = second.extensions[EXTENSION].store.get(request_id)
    assert record is not None and record.owner == second.extensions[EXTENSION].pool.owner


def test_what_fell_due_while_no_process_ran_is_taken_at_start(
    make_app: Callable[..., Flask], smtp_server: SmtpServer, durable_url: str
) -> None:
    first = make_app(smtp_server.port, status_store_url=durable_url)
    request_id = scheduled_send(first.test_client(), at(1))
    stop(first)
    passed(moment(status_of(first.test_client(), request_id)["send_at"]))
    assert arrived(smtp_server, request_id) == 0
    second = make_app(smtp_server.port, status_store_url=durable_url)
    assert wait_final(second.test_client(), request_id, timeout=20)["status"] == "sent"
    assert arrived(smtp_server, request_id) == 1


def test_a_scheduled_request_taken_after_its_expiry_ends_expired(
    make_app: Callable[..., Flask], smtp_server: SmtpServer, durable_url: str
) -> None:
    first = make_app(smtp_server.port, status_store_url=durable_url)
    request_id = scheduled_send(first.test_client(), at(1), expires_at=at(1.5))
    stop(first)
    passed(moment(status_of(first.test_client(), request_id)["expires_at"]))
    second = make_app(smtp_server.port, status_store_url=durable_url)
    status = wait_final(second.test_client(), request_id, timeout=20)
    assert (status["status"], status["error"]) == ("expired", "expired before it could be sent")
    assert status["attempts"] == 0 and arrived(smtp_server, request_id) == 0
    line = "expired (expired before it could be sent)"
    assert wait_for(lambda: log_statuses(second, request_id) == ["scheduled", line])


# -- the due scheduler on its own (the memory store, one process) ------------------------------

SPEC = MessageSpec(recipient=("user@example.com",), subject="Hi", body="Hello")
T0 = utcnow() - timedelta(hours=2)  # when the requests below fell due


def scheduled(request_id: str, send_at: datetime, expires_at: datetime | None = None) -> Any:
    return StatusRecord(
        request_id, EmailStatus.SCHEDULED, SENDER, ("user@example.com",), ("user@example.com",),
        T0, T0, send_at=send_at, expires_at=expires_at,
    ).noted()  # fmt: skip


def senders(port: int) -> SenderDirectory:
    """The one test sender, on the given port."""
    return SenderDirectory([(API_KEY, Sender(SENDER, "", "127.0.0.1", port, "none"))])


def pool_for(store: MemoryStatusStore, port: int, events: EventBus, **options: Any) -> WorkerPool:
    attempt = DeliveryAttempt(store, SmtpClient(5.0), events, max_attempts=2, retry_backoff=0.1)
    return WorkerPool(attempt, workers=2, **options)


def test_the_scheduler_takes_only_what_is_due_and_ends_the_expired(smtp_server: SmtpServer):
    store, events, seen = MemoryStatusStore(60), EventBus(), []
    events.subscribe(seen.append)
    store.create(scheduled("due", T0), SPEC.to_json())
    store.create(scheduled("later", T0 + timedelta(hours=1)), SPEC.to_json())
    store.create(scheduled("gone", T0, expires_at=T0 + timedelta(seconds=30)), SPEC.to_json())
    pool = pool_for(store, smtp_server.port, events)
    clock = T0 + timedelta(minutes=1)
    scheduler = DueScheduler(store, pool, senders(smtp_server.port), events, clock=lambda: clock)
    try:
        assert scheduler.take_due() == (2, 1, 100)  # two due, one taken, one expired
        assert wait_for(lambda: store.get("due").status is EmailStatus.SENT)
        gone = store.get("gone")
        assert (gone.status, gone.error) == (EmailStatus.EXPIRED, "expired before it could be sent")
        assert gone.owner == pool.owner and store.payload("gone") is None
        assert store.get("later").status is EmailStatus.SCHEDULED
        finished = [e.record.request_id for e in seen if isinstance(e, Finished)]
        assert sorted(finished) == ["due", "gone"]
        assert arrived(smtp_server, "due") == 1 and arrived(smtp_server, "gone") == 0
        assert scheduler.take_due() == (0, 0, 100), "nothing is taken twice"
    finally:
        pool.drain(5)


def test_two_schedulers_on_one_store_take_each_request_once(smtp_server: SmtpServer):
    store, events = MemoryStatusStore(60), EventBus()
    ids = [f"r{n}" for n in range(40)]
    for request_id in ids:
        store.create(scheduled(request_id, T0), SPEC.to_json())
    pools = [pool_for(store, smtp_server.port, events) for _ in range(2)]
    schedulers = [
        DueScheduler(store, pool, senders(smtp_server.port), events, batch=7) for pool in pools
    ]
    taken = [0, 0]

    def run(n: int) -> None:
        while (got := schedulers[n].take_due())[0]:
            taken[n] += got[1]

    threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sum(taken) == len(ids)
        wait_for(lambda: all(store.get(i).status is EmailStatus.SENT for i in ids), timeout=30)
        assert all(arrived(smtp_server, request_id) == 1 for request_id in ids)
    finally:
        for pool in pools:
            pool.drain(5)


def test_the_scheduler_takes_no_more_than_the_dispatcher_has_room_for(smtp_server: SmtpServer):
    store, events = MemoryStatusStore(60), EventBus()
    for n in range(5):
        store.create(scheduled(f"r{n}", T0), SPEC.to_json())
    pool = pool_for(store, smtp_server.port, events, queue_max=2)
    scheduler = DueScheduler(store, pool, senders(smtp_server.port), events)
    try:
        listed, taken, limit = scheduler.take_due()
        assert (listed, taken, limit) == (2, 2, 2)
        assert store.counts()[EmailStatus.SCHEDULED] == 3, "the rest wait in the store"
    finally:
        pool.drain(5)


def test_the_scheduler_takes_no_more_content_than_queue_max_bytes_allows(
    smtp_server: SmtpServer,
) -> None:
    smtp_server.handler.script("MAIL", *[("SLEEP", 1.0)] * 2)  # the first two held a while
    store, events = MemoryStatusStore(60), EventBus()
    big = MessageSpec(recipient=("user@example.com",), subject="Hi", body="x" * 200_000)
    for n in range(5):
        store.create(scheduled(f"r{n}", T0), big.to_json())
    pool = pool_for(store, smtp_server.port, events, queue_max_bytes=500_000)
    scheduler = DueScheduler(store, pool, senders(smtp_server.port), events)
    try:
        listed, taken, limit = scheduler.take_due()
        assert (listed, taken, limit) == (5, 2, 2), "two of 200 KB fit in 500 KB, not three"
        assert pool.held_bytes() <= 500_000
        assert store.counts()[EmailStatus.SCHEDULED] == 3, "the rest wait in the store"
        # Later rounds take the rest as the first ones are sent and their bytes given back.
        wait_for(lambda: scheduler.take_due() and store.counts()[EmailStatus.SCHEDULED] == 0,
                 timeout=30)  # fmt: skip
        wait_for(lambda: store.counts()[EmailStatus.SENT] == 5, timeout=30)
    finally:
        pool.drain(30)


# -- both dispatchers: the thread pool and a real Celery worker ------------------------------


def test_a_scheduled_send_is_sent_when_due_on_either_dispatcher(path) -> None:  # noqa: F811
    answer = path.send(message(subject="Scheduled", send_at=at(2)))
    assert answer.status_code == 202 and answer.get_json()["status"] == "scheduled"
    request_id = answer.get_json()["request_id"]
    status = path.final(request_id, timeout=30)
    assert status["status"] == "sent", status
    got = wait_for(lambda: path.arrived(request_id))
    assert len(got) == 1 and got[0].message["Subject"] == "Scheduled"
    history = history_of(path.app, request_id)
    assert [status for status, _ in history] == ["scheduled", "queued", "sending", "sent"]
    assert history[1][1] >= moment(status["send_at"])
    lines = wait_for(lambda: (got := path.log_lines(request_id)) and len(got) >= 2 and got)
    assert [line.rsplit("Status: ", 1)[1] for line in lines] == ["scheduled", "sent"]


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_a_celery_worker_without_prefork_takes_due_requests_before_any_task(
    tmp_path: Path, smtp_server: SmtpServer, redis_server: Any, pool: str
) -> None:
    # Nothing but the worker runs: no API process, so no task is ever published. Its own due
    # scheduler must take the due request, and its lease keeper recover the orphan a dead
    # process left, as a prefork child's do from its start.
    from mailservice.stores import store_from_url
    from mailservice.testing.celery_worker import CeleryWorker
    from tests.conftest import celery_env

    env = celery_env(tmp_path, smtp_server.port, redis_server.port, 8, 9,
                     EMAIL_LOG=str(tmp_path / "worker_log.txt"))  # fmt: skip
    store = store_from_url(env["STATUS_STORE_URL"], 3600)
    request_id = "88888888-8888-4888-8888-000000000001"
    store.create(scheduled(request_id, T0), SPEC.to_json())
    orphan = replace(scheduled("88888888-8888-4888-8888-000000000002", T0),
                     status=EmailStatus.QUEUED, owner="gone-host:1:0")  # fmt: skip
    store.create(orphan, SPEC.to_json())
    worker = CeleryWorker(tmp_path, env, concurrency=2, pool=pool).start()
    try:
        ids = (request_id, orphan.request_id)
        wait_for(lambda: all(store.get(i).status is EmailStatus.SENT for i in ids), timeout=30)
        got = sorted(m.message["Message-ID"] for m in smtp_server.received)
        assert got == [f"<{i}@example.com>" for i in ids]
    finally:
        worker.stop()
        store.close()
