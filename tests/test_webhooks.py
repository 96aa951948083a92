"""Webhooks end to end (API.md section 4): real SMTP servers, real local HTTP receivers that
check the signature, the status's webhook state, the address rules at send time, retries, and
delivery by another process after a restart."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from mail_server import EXTENSION
from mailservice.errors import StoreError
from mailservice.events.webhook_client import WebhookClient
from mailservice.events.webhooks import WebhookNotifier, webhook_body
from mailservice.stores.contract import EmailStatus, StatusRecord, WebhookState, utcnow
from mailservice.stores.memory_store import MemoryStatusStore
from mailservice.testing.ports import free_port
from mailservice.testing.service_process import ServiceProcess
from mailservice.testing.smtp_servers import SilentServer, SmtpServer
from mailservice.testing.webhook_receiver import WebhookReceiver
from tests.conftest import API_KEY, send, wait_final, wait_for
from tests.test_durability import service_env
from tests.test_jwt_auth import sign
from tests.test_webhook_client import StubResolver

SECRET = "whk-test-secret-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
# Quick tries for tests: WEBHOOK_TIMEOUT and WEBHOOK_BACKOFF of API.md section 1.
FAST = {
    "webhook_secret": SECRET,
    "webhook_allow_private": True,
    "webhook_timeout": 0.5,
    "webhook_backoff": 0.02,
}


def fast(**changes: Any) -> dict[str, Any]:
    """FAST with some settings changed."""
    return {**FAST, **changes}


@pytest.fixture
def receiver() -> Iterator[Callable[..., WebhookReceiver]]:
    started: list[WebhookReceiver] = []

    def start(**options: Any) -> WebhookReceiver:
        server = WebhookReceiver(SECRET, **options).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def stub_resolver(monkeypatch) -> Iterator[Callable[[list[list[str]]], StubResolver]]:
    """Scripted DNS for names under `.example` (see StubResolver); held lookups end after."""
    made: list[StubResolver] = []

    def make(answers: list[list[str]]) -> StubResolver:
        made.append(StubResolver(monkeypatch, answers))
        return made[-1]

    yield make
    for resolver in made:
        resolver.release.set()


def answer_within(call: Callable[[], Any], within: float = 10.0) -> Any:
    """What `call` (a request to the app) answers, waiting for it at most `within` seconds."""
    answers: list[Any] = []
    threading.Thread(target=lambda: answers.append(call()), daemon=True).start()
    return wait_for(lambda: answers, timeout=within)[0]


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer().start()
    yield server
    server.stop()


def message(callback_url: str | None = None, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"recipient": "user@example.com", "subject": "Hi", "body": "Hello"}
    if callback_url is not None:
        body["callback_url"] = callback_url
    return {**body, **fields}


def webhook_state(client: Any, request_id: str) -> str | None:
    return client.get(f"/email-status/{request_id}").get_json()["webhook"]


def wait_webhook(client: Any, request_id: str, state: str, timeout: float = 10.0) -> None:
    wait_for(lambda: webhook_state(client, request_id) == state, timeout)


def test_callback_gets_the_signed_final_status_after_500s_then_200(
    make_app, smtp_server, receiver
) -> None:
    gate = threading.Event()
    hooks = receiver(answers=[500, 500, 500], gate=gate)
    client = make_app(smtp_server.port, **fast(webhook_timeout=10.0)).test_client()
    answer = send(client, message(hooks.url("/hooks/mail?token=abc")))
    assert answer.status_code == 202
    request_id = answer.get_json()["request_id"]
    wait_for(lambda: hooks.arrived >= 1)  # the first try is held open by the receiver
    status = client.get(f"/email-status/{request_id}").get_json()
    assert status["status"] == "sent" and status["webhook"] == "pending"
    gate.set()
    wait_webhook(client, request_id, "delivered")
    assert [hit.status for hit in hooks.hits] == [500, 500, 500, 200], "4 tries, each counted"
    assert all(hit.signed for hit in hooks.hits), "signature and timestamp check out"
    assert len({hit.body for hit in hooks.hits}) == 1, "the same bytes on every try"
    assert {hit.path for hit in hooks.hits} == {"/hooks/mail?token=abc"}
    body = hooks.hits[-1].json
    assert body["event"] == "email.sent"
    assert body["request_id"] == request_id and body["status"] == "sent"
    assert body["recipients"] == ["user@example.com"]
    assert body["tags"] == [] and body["metadata"] == {}
    assert "callback_url" not in body and "Hello" not in hooks.hits[-1].body.decode()
    assert len(smtp_server.received) == 1


def test_webhook_url_and_the_callback_each_get_their_own_tries(
    make_app, smtp_server, receiver
) -> None:
    deployment, own = receiver(answers=[503, 503]), receiver()
    client = make_app(smtp_server.port, **fast(webhook_url=deployment.url("/all"))).test_client()
    with_callback = send(client, message(own.url())).get_json()["request_id"]
    without = send(client, message()).get_json()["request_id"]
    wait_webhook(client, with_callback, "delivered")
    wait_webhook(client, without, "delivered")
    assert [hit.json["request_id"] for hit in own.hits] == [with_callback]
    answered = {(hit.json["request_id"], hit.status) for hit in deployment.hits}
    assert {(with_callback, 200), (without, 200)} <= answered
    assert len(deployment.hits) == 4, "two 503s, then one 200 each"


def test_failed_request_sends_email_failed_with_its_metadata(
    make_app, smtp_server, receiver
) -> None:
    hooks = receiver()
    smtp_server.handler.script("RCPT", "550 5.1.1 no such user")
    client = make_app(smtp_server.port, **fast(webhook_url=hooks.url())).test_client()
    token = sign({"test": "data"}, API_KEY)
    answer = client.post(
        "/api/v1/mail/send-email/",
        json={"email_to": "gone@example.com", "subject": "Hi", "message": "<p>x</p>", "user_id": 7},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert answer.status_code == 201
    request_id = answer.get_json()["request_id"]
    wait_webhook(client, request_id, "delivered")
    body = hooks.hits[0].json
    assert body["event"] == "email.failed" and body["status"] == "failed"
    assert body["metadata"] == {"user_id": "7"}
    assert body["error"].startswith("every recipient was refused: ")


def test_a_receiver_that_never_answers_is_retried_until_failed(
    make_app, smtp_server, silent, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="mailservice.events.webhooks")
    client = make_app(smtp_server.port, **fast(webhook_timeout=0.2)).test_client()
    request_id = send(client, message(f"http://127.0.0.1:{silent.port}/hook")).get_json()[
        "request_id"
    ]
    wait_webhook(client, request_id, "failed")
    assert silent.connections == 6, "6 tries, each timed out on a connection of its own"
    lines = [r.getMessage() for r in caplog.records if request_id in r.getMessage()]
    assert sum("no answer within 0.2 s" in line for line in lines) == 6, "logged once per try"
    assert any("failed for good after 6 tries" in line for line in lines)
    assert SECRET not in caplog.text and "/hook" not in caplog.text, "no secret, no path"


def test_a_receiver_that_drips_its_answer_holds_each_try_for_webhook_timeout_at_most(
    make_app, smtp_server, receiver
) -> None:
    # A byte every 0.2 s: no read times out, and one answer would last for hours.
    hooks = receiver(drip=0.2)
    client = make_app(smtp_server.port, **fast(webhook_timeout=0.5)).test_client()
    request_id = send(client, message(hooks.url())).get_json()["request_id"]
    wait_webhook(client, request_id, "failed", timeout=20)
    assert len(hooks.hits) == 6, "6 tries, each cut off at its time-out"
    wait_for(lambda: hooks.dripping == 0)


def test_a_refused_connection_is_retried_until_failed(make_app, smtp_server, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="mailservice.events.webhooks")
    client = make_app(smtp_server.port, **FAST).test_client()
    request_id = send(client, message(f"http://127.0.0.1:{free_port()}/")).get_json()["request_id"]
    wait_webhook(client, request_id, "failed")
    refused = [r for r in caplog.records if "Connection refused" in r.getMessage()]
    assert len(refused) == 6


def test_sending_threads_never_wait_for_a_webhook(make_app, smtp_server, silent) -> None:
    # Tries that hang for 30 s on every one of the webhook threads; two sending threads.
    client = make_app(smtp_server.port, **fast(webhook_timeout=30.0, workers=2)).test_client()
    url = f"http://127.0.0.1:{silent.port}/"
    ids = [send(client, message(url)).get_json()["request_id"] for _ in range(8)]
    for request_id in ids:
        assert wait_final(client, request_id, timeout=10)["status"] == "sent"
    wait_for(lambda: silent.connections >= 4)
    assert len(smtp_server.received) == 8
    assert {webhook_state(client, request_id) for request_id in ids} == {"pending"}


def test_no_webhook_target_means_webhook_null(client, smtp_server) -> None:
    request_id = send(client).get_json()["request_id"]
    assert wait_final(client, request_id)["webhook"] is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:9/hook", "127.0.0.1 is a loopback address"),
        ("http://[::1]/hook", "::1 is a loopback address"),
        ("http://10.0.0.1/hook", "10.0.0.1 is a private address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("https://localhost:8443/hook", "localhost resolves to 127.0.0.1, a loopback address"),
        ("http://[::ffff:127.0.0.1]/", "::ffff:127.0.0.1 is a loopback address"),
        ("http://2130706433/", "2130706433 resolves to 127.0.0.1, a loopback address"),
        ("http://0.0.0.0/", "0.0.0.0 is an unspecified address"),
    ],
)
def test_a_private_callback_url_is_refused_at_send_time(
    make_app, smtp_server, url: str, reason: str
) -> None:
    client = make_app(smtp_server.port, webhook_secret=SECRET).test_client()
    answer = send(client, message(url))
    assert answer.status_code == 400
    assert answer.mimetype == "application/problem+json"
    (error,) = answer.get_json()["errors"]
    assert error["field"] == "callback_url"
    assert reason in error["message"]
    allowed = make_app(smtp_server.port, webhook_secret=SECRET, webhook_allow_private=True)
    assert send(allowed.test_client(), message(url)).status_code == 202
    wait_for(lambda: len(smtp_server.received) == 1)  # only the allowed one was sent


def test_send_time_lookups_share_one_webhook_timeout_per_request(
    make_app, smtp_server, stub_resolver
) -> None:
    # 20 hosts whose name server never answers: the first lookup gets the request's
    # WEBHOOK_TIMEOUT (0.5 s), the others no time at all, and every message is accepted (each
    # try checks its host). 0.5 s per lookup would be 10 s; the old code waited for ever.
    resolver = stub_resolver([["93.184.216.34"]])
    client = make_app(smtp_server.port, **fast(webhook_allow_private=False)).test_client()
    batch = {"messages": [message(f"http://h{i}.slow.example/hook") for i in range(20)]}
    answer = answer_within(
        lambda: client.post("/send-email/batch", json=batch, headers=AUTH), within=5.0
    )
    assert answer.status_code == 202
    assert {item["status"] for item in answer.get_json()["messages"]} == {"queued"}
    assert resolver.asked[0] == "h0.slow.example"


def test_a_batch_looks_each_callback_host_up_once(make_app, smtp_server, stub_resolver) -> None:
    resolver = stub_resolver([["10.0.0.7"]])
    client = make_app(smtp_server.port, **fast(webhook_allow_private=False)).test_client()
    batch = {"messages": [message("http://hooks.example/hook") for _ in range(5)]}
    answer = client.post("/send-email/batch", json=batch, headers=AUTH)
    assert answer.status_code == 400, "each refused: hooks.example resolves to 10.0.0.7"
    errors = answer.get_json()["errors"]
    assert [error["field"] for error in errors] == [f"messages.{i}.callback_url" for i in range(5)]
    assert all("10.0.0.7, a private address" in error["message"] for error in errors)
    assert resolver.asked.count("hooks.example") == 1, "one lookup for the five"
    assert client.post("/send-email/batch", json=batch, headers=AUTH).status_code == 400
    assert resolver.asked.count("hooks.example") == 2, "the next request looks it up afresh"
    assert len(smtp_server.received) == 0


def test_dns_rebinding_after_the_send_time_check_is_refused_by_the_try(
    make_app, smtp_server, receiver, stub_resolver, caplog
) -> None:
    # The name answers a public address when the request comes, a loopback one afterwards,
    # where a receiver listens: every try resolves it again, refuses, and connects to nothing.
    caplog.set_level(logging.WARNING, logger="mailservice.events.webhooks")
    hooks = receiver()
    resolver = stub_resolver([["93.184.216.34"], ["127.0.0.1"]])
    client = make_app(smtp_server.port, **fast(webhook_allow_private=False)).test_client()
    answer = send(client, message(f"http://rebind.example:{hooks.port}/hook"))
    assert answer.status_code == 202, "public at send time"
    request_id = answer.get_json()["request_id"]
    wait_webhook(client, request_id, "failed")
    assert hooks.hits == [] and hooks.arrived == 0, "nothing reached the loopback receiver"
    assert resolver.asked.count("rebind.example") == 7, "the check, then each of the 6 tries"
    refusals = [r for r in caplog.records if "resolves to 127.0.0.1, a loopback" in r.getMessage()]
    assert len(refusals) == 6
    assert len(smtp_server.received) == 1


def test_callback_url_without_a_webhook_secret_is_400(client, smtp_server) -> None:
    answer = send(client, message("https://hooks.example.com/mail"))
    assert answer.status_code == 400
    (error,) = answer.get_json()["errors"]
    assert error == {
        "field": "callback_url",
        "message": "webhooks are not configured (WEBHOOK_SECRET is not set)",
    }
    assert len(smtp_server.received) == 0


@pytest.mark.parametrize(
    ("value", "message_part"),
    [
        ("ftp://hooks.example.com/", "http:// or https://"),
        ("javascript:alert(1)", "http:// or https://"),
        ("https:///path-only", "must name a host"),
        ("https://user:pw@hooks.example.com/", "user:password@"),
        ("https://hooks.example.com:99999/", "invalid port"),
        ("https://höoks.example.com/", "ASCII"),
        ("https://hooks.example.com/a b", "ASCII without spaces"),
        ("https://hooks.example.com/" + "a" * 2030, "at most 2048 characters"),
        ("http://nonexistent.invalid/hook", "does not resolve"),
        (42, "string"),
    ],
)
def test_a_malformed_callback_url_is_400_naming_it(
    make_app, smtp_server, value: Any, message_part: str
) -> None:
    client = make_app(smtp_server.port, webhook_secret=SECRET).test_client()
    answer = send(client, message(value))
    assert answer.status_code == 400
    (error,) = answer.get_json()["errors"]
    assert error["field"] == "callback_url" and message_part in error["message"]
    assert len(smtp_server.received) == 0


def test_a_store_that_refuses_the_outcome_is_tried_again(receiver) -> None:
    class RefusingStore(MemoryStatusStore):
        refusals = 2

        def save(self, record: StatusRecord) -> bool:
            if record.webhook is WebhookState.DELIVERED and self.refusals:
                self.refusals -= 1
                raise StoreError("disk full")
            return super().save(record)

    hooks, store = receiver(), RefusingStore(ttl=60)
    record = final_record(hooks.url())
    store.create(record, "{}")
    store.save(record)
    notifier = WebhookNotifier(store, WebhookClient(SECRET, 2.0, True), "p1", save_first=0.01)
    try:
        notifier.enqueue(record)
        wait_for(lambda: store.get(record.request_id).webhook is WebhookState.DELIVERED)
        assert store.refusals == 0 and len(hooks.hits) == 1, "delivered once, saved the third time"
        assert notifier.held() == 0
    finally:
        notifier.close()


def final_record(callback_url: str, request_id: str = "cccccccc-cccc-4ccc-8ccc-000000000001"):
    now = utcnow()
    return StatusRecord(
        request_id=request_id,
        status=EmailStatus.SENT,
        sender="sender@example.com",
        recipients=("a@example.com",),
        pending=(),
        created_at=now,
        updated_at=now,
        attempts=1,
        owner="p1",
        metadata={"order": "42"},
        tags=("invoice",),
        callback_url=callback_url,
        webhook=WebhookState.PENDING,
    )


def test_the_body_is_the_status_with_its_event_tags_and_metadata() -> None:
    record = final_record("https://hooks.example.com/")
    sent = webhook_body(record)
    assert sent.startswith(b'{"event":"email.sent","request_id":"cccccccc-')
    failed = webhook_body(replace(record, status=EmailStatus.FAILED, error="550 no"))
    assert failed.startswith(b'{"event":"email.failed"')
    assert b'"tags":["invoice"]' in sent and b'"metadata":{"order":"42"}' in sent
    assert b"hooks.example.com" not in sent, "the callback URL is internal"


def test_memory_store_shutdown_logs_the_webhooks_given_up(
    make_app, smtp_server, receiver, caplog
) -> None:
    hooks = receiver(answers=[500])
    app = make_app(smtp_server.port, **fast(webhook_backoff=600.0))
    client = app.test_client()
    request_id = send(client, message(hooks.url())).get_json()["request_id"]
    wait_for(lambda: len(hooks.hits) == 1)  # the first try failed; the next is 10 min away
    caplog.set_level(logging.INFO, logger="mailservice.events.webhooks")
    app.extensions[EXTENSION].shutdown(0)
    assert "1 webhook(s) given up at shutdown" in caplog.text
    assert f"webhook given up at shutdown request_id={request_id}" in caplog.text


def pending_then_stopped(make_app: Callable[..., Flask], smtp_port: int, url: str, hook: str):
    """An app on `url` that sent a request whose webhook is still pending, then stopped (its
    lease given up); the request's id."""
    first = make_app(smtp_port, status_store_url=url, **fast(webhook_backoff=600.0))
    client = first.test_client()
    request_id = send(client, message(hook)).get_json()["request_id"]
    wait_final(client, request_id)
    assert webhook_state(client, request_id) == "pending"
    first.extensions[EXTENSION].shutdown(0)
    return request_id


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_another_process_delivers_a_pending_webhook_once(
    make_app, smtp_server, receiver, tmp_path: Path, request, backend: str
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'status.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("redis_server").url
    )
    hooks = receiver(answers=[500])
    request_id = pending_then_stopped(make_app, smtp_server.port, url, hooks.url())
    assert len(hooks.hits) == 1
    second = make_app(smtp_server.port, status_store_url=url, **FAST).test_client()
    wait_webhook(second, request_id, "delivered")
    assert [hit.status for hit in hooks.hits] == [500, 200]
    assert hooks.hits[1].json["request_id"] == request_id
    assert len(smtp_server.received) == 1, "the mail itself was sent once"


def test_after_kill_9_a_new_process_delivers_the_pending_webhook(tmp_path: Path, receiver) -> None:
    smtp = SmtpServer().start()
    hooks = receiver(answers=[500])
    env = service_env(
        tmp_path,
        smtp.port,
        f"sqlite:///{tmp_path / 'status.db'}",
        WEBHOOK_SECRET=SECRET,
        WEBHOOK_ALLOW_PRIVATE="1",
        WEBHOOK_BACKOFF="600",
        WEBHOOK_TIMEOUT="2",
    )
    first = ServiceProcess(tmp_path, env).start()
    second = None
    try:
        status, _, body = first.request("POST", "/send-email", message(hooks.url()), AUTH)
        assert status == 202
        request_id = body["request_id"]
        wait_for(lambda: len(hooks.hits) == 1)
        first.stop(signal.SIGKILL)
        second = ServiceProcess(tmp_path, env).start()

        def delivered() -> bool:
            state = second.request("GET", f"/email-status/{request_id}")[2]
            return state["status"] == "sent" and state["webhook"] == "delivered"

        wait_for(delivered, timeout=30)
        assert [hit.status for hit in hooks.hits] == [500, 200]
        assert len(smtp.received) == 1
    finally:
        first.stop(signal.SIGKILL)
        if second is not None:
            assert second.stop() == 0
        smtp.stop()


def test_a_full_queue_leaves_a_webhook_pending_for_a_later_round(tmp_path: Path, receiver) -> None:
    from mailservice.stores.sqlite_store import SqliteStatusStore

    gate = threading.Event()
    hooks = receiver(gate=gate)
    store = SqliteStatusStore(str(tmp_path / "status.db"), ttl=600)
    store.heartbeat("p1", 30)
    records = [final_record(hooks.url(), f"dddddddd-dddd-4ddd-8ddd-00000000000{i}") for i in (1, 2)]
    for record in records:
        store.create(record, "{}")
        store.save(record)
    notifier = WebhookNotifier(store, WebhookClient(SECRET, 10.0, True), "p1", max_pending=1)
    try:
        assert notifier.enqueue(records[0]) is True
        assert notifier.enqueue(records[1]) is False, "the queue holds one"
        assert notifier.recover() == 0, "no room while the first is held"
        gate.set()
        wait_for(lambda: store.get(records[0].request_id).webhook is WebhookState.DELIVERED)
        wait_for(lambda: notifier.held() == 0)
        assert notifier.recover() == 1, "this process's own, left in the store, taken up"
        wait_for(lambda: store.get(records[1].request_id).webhook is WebhookState.DELIVERED)
        assert sorted(hit.json["request_id"] for hit in hooks.hits) == [
            r.request_id for r in records
        ]
    finally:
        notifier.close()
        store.close()


def test_the_delivering_process_posts_to_its_own_webhook_url(
    tmp_path: Path, receiver, caplog
) -> None:
    """API.md section 4: the targets are those at delivery time. Three webhooks a stopped
    process left pending: one accepted under a WEBHOOK_URL with a callback, one under it
    without, one with only a callback; taken up by processes with and without WEBHOOK_URL."""
    from mailservice.stores.sqlite_store import SqliteStatusStore

    caplog.set_level(logging.WARNING, logger="mailservice.events.webhooks")
    own, deployment = receiver(), receiver()
    store = SqliteStatusStore(str(tmp_path / "status.db"), ttl=600)
    both, only_deployment, only_callback = (
        replace(final_record(own.url(), f"eeeeeeee-eeee-4eee-8eee-00000000000{i}"), owner="gone")
        for i in (1, 2, 3)
    )
    only_deployment = replace(only_deployment, callback_url=None)
    for record in (both, only_deployment):
        store.create(record, "{}")
        store.save(record)
    without = WebhookNotifier(store, WebhookClient(SECRET, 2.0, True), "p1")
    try:
        assert without.recover() == 2
        wait_for(lambda: without.held() == 0)
    finally:
        without.close()
    assert store.get(both.request_id).webhook is WebhookState.DELIVERED, "to the callback"
    assert store.get(only_deployment.request_id).webhook is None, "no target left: none owed"
    assert f"webhook not sent request_id={only_deployment.request_id}" in caplog.text
    assert [hit.json["request_id"] for hit in own.hits] == [both.request_id]
    store.create(only_callback, "{}")
    store.save(only_callback)
    client = WebhookClient(SECRET, 2.0, True)
    with_url = WebhookNotifier(store, client, "p2", deployment_url=deployment.url("/all"))
    try:
        assert with_url.recover() == 1
        wait_for(lambda: store.get(only_callback.request_id).webhook is WebhookState.DELIVERED)
    finally:
        with_url.close()
        store.close()
    assert [hit.json["request_id"] for hit in deployment.hits] == [only_callback.request_id]
    assert own.hits[-1].json["request_id"] == only_callback.request_id


def left_pending(store: Any, url: str, count: int, owner: str = "gone") -> list[StatusRecord]:
    """`count` final records whose webhook to `url` is pending, left by a stopped `owner`."""
    records = [
        replace(final_record(url, f"ffffffff-ffff-4fff-8fff-{i:012d}"), owner=owner)
        for i in range(count)
    ]
    store.create_many([(record, "{}") for record in records])
    for record in records:
        store.save(record)
    return records


def test_a_recovery_round_claims_at_most_100_and_the_next_goes_on(tmp_path: Path, receiver):
    from mailservice.stores.sqlite_store import SqliteStatusStore

    hooks = receiver()
    store = SqliteStatusStore(str(tmp_path / "status.db"), ttl=600)
    records = left_pending(store, hooks.url(), 130)
    notifier = WebhookNotifier(store, WebhookClient(SECRET, 2.0, True), "p1")
    try:
        assert notifier.recover() == 100
        assert notifier.recover() == 30, "the rest, not the first 100 again"
        wait_for(lambda: notifier.held() == 0)
        assert {hit.json["request_id"] for hit in hooks.hits} == {r.request_id for r in records}
    finally:
        notifier.close()
        store.close()


def test_lease_renewal_goes_on_while_webhook_recovery_meets_a_slow_store(
    make_app, smtp_server, receiver, tmp_path: Path, monkeypatch
) -> None:
    # Each claim waits 50 ms (another process's write lock): 200 of them, in one round, were
    # 10 s without renewing a lease of 1.5 s, after which other processes take over and send
    # again this process's unfinished mail.
    import sqlite3

    from mailservice.stores.sqlite_store import SqliteStatusStore

    path = tmp_path / "status.db"
    hooks = receiver()
    store = SqliteStatusStore(str(path), ttl=600)
    left_pending(store, hooks.url(), 200)
    store.close()
    claim = SqliteStatusStore.claim_webhook
    claims: list[str] = []

    def slow_claim(self: SqliteStatusStore, request_id: str, owner: str) -> Any:
        time.sleep(0.05)  # the wait for the lock, made up: the test is about the lease
        claims.append(request_id)
        return claim(self, request_id, owner)

    monkeypatch.setattr(SqliteStatusStore, "claim_webhook", slow_claim)
    app = make_app(
        smtp_server.port, status_store_url=f"sqlite:///{path}", lease_seconds=1.5, **FAST
    )
    owner = app.extensions[EXTENSION].pool.owner
    leases: set[float] = set()
    watch = sqlite3.connect(path)
    try:

        def renewed_three_times() -> bool:
            row = watch.execute("SELECT lease_until FROM owners WHERE owner = ?", (owner,))
            leases.update(value for (value,) in row.fetchall())
            return len(leases) >= 4

        wait_for(renewed_three_times, timeout=5)
        assert claims, "while webhook recovery was under way"
    finally:
        watch.close()


def test_a_bug_in_a_try_fails_that_target_instead_of_holding_the_request(caplog) -> None:
    class BrokenClient(WebhookClient):
        def post(self, url: str, body: bytes) -> int:
            raise RuntimeError("a bug")

    store = MemoryStatusStore(ttl=60)
    record = final_record("https://hooks.example.com/")
    store.create(record, "{}")
    notifier = WebhookNotifier(store, BrokenClient(SECRET, 1.0), "p1")
    try:
        notifier.enqueue(record)
        wait_for(lambda: notifier.held() == 0)
        assert store.get(record.request_id).webhook is WebhookState.FAILED
        assert f"webhook delivery failed request_id={record.request_id}" in caplog.text
    finally:
        notifier.close()


def test_each_message_of_a_batch_gets_its_own_callback(make_app, smtp_server, receiver) -> None:
    hooks = receiver()
    client = make_app(smtp_server.port, **FAST).test_client()
    answer = client.post(
        "/send-email/batch",
        json={
            "messages": [
                message(hooks.url("/a"), tags=["first"]),
                message(),
                message(hooks.url("/b"), metadata={"n": "3"}),
            ]
        },
        headers=AUTH,
    )
    assert answer.status_code == 202
    first, plain, third = (item["request_id"] for item in answer.get_json()["messages"])
    wait_webhook(client, first, "delivered")
    wait_webhook(client, third, "delivered")
    assert webhook_state(client, plain) is None, "no target, no webhook"
    by_path = {hit.path: hit.json for hit in hooks.hits}
    assert set(by_path) == {"/a", "/b"} and all(hit.signed for hit in hooks.hits)
    assert (by_path["/a"]["request_id"], by_path["/a"]["tags"]) == (first, ["first"])
    assert (by_path["/b"]["request_id"], by_path["/b"]["metadata"]) == (third, {"n": "3"})


def test_a_batch_message_with_a_private_callback_is_refused_alone(
    make_app, smtp_server, receiver
) -> None:
    hooks = receiver()
    client = make_app(smtp_server.port, **fast(webhook_allow_private=False)).test_client()
    answer = client.post(
        "/send-email/batch",
        json={"messages": [message(), message(hooks.url("/private"))]},
        headers=AUTH,
    )
    assert answer.status_code == 207
    accepted, refused = answer.get_json()["messages"]
    assert accepted["status"] == "queued"
    assert refused["status"] == 400 and refused["errors"][0]["field"] == "callback_url"
    wait_final(client, accepted["request_id"])
    assert len(smtp_server.received) == 1 and not hooks.hits
