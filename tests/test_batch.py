"""POST /send-email/batch (API.md section 3, "Batches"): answers in order, 202/207/400, the rate
limit counted per message, an Idempotency-Key covering the whole batch, one store round trip;
and `Acceptor.accept_many` on its own, without Flask."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from mail_server import EXTENSION
from mailservice.delivery.accepting import Acceptor, RequestExtras
from mailservice.delivery.attempt import DeliveryAttempt
from mailservice.delivery.message_spec import MessageSpec
from mailservice.delivery.smtp_client import SmtpClient
from mailservice.errors import Unavailable
from mailservice.events.bus import Accepted, EventBus
from mailservice.senders import Sender
from mailservice.stores.contract import EmailStatus, IdempotencyClaim
from mailservice.stores.sqlite_store import SqliteStatusStore
from tests.conftest import API_KEY, OTHER_SENDER, SENDER, send, wait_final, wait_for
from worker_pool import WorkerPool

PROBLEM = "application/problem+json"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def message(n: int, **fields: Any) -> dict[str, Any]:
    """A valid message to user<n>@example.com with subject `batch <n>`."""
    body = {"recipient": f"user{n}@example.com", "subject": f"batch {n}", "body": f"Hello {n}"}
    return {k: v for k, v in {**body, **fields}.items() if v is not None}


def post_batch(client, messages: Any, headers: dict[str, str] | None = None, **top: Any):
    return client.post(
        "/send-email/batch", json={"messages": messages, **top}, headers={**AUTH, **(headers or {})}
    )


def subjects(smtp_server) -> list[str]:
    return sorted(r.message["Subject"] for r in smtp_server.received)


# -- answers ---------------------------------------------------------------------------------


def test_an_all_good_batch_is_202_and_every_message_arrives_as_its_own(client, smtp_server):
    batch = [message(n, tags=[f"n{n}"], metadata={"n": str(n)}) for n in range(5)]
    answer = post_batch(client, batch)
    assert answer.status_code == 202, answer.get_json()
    items = answer.get_json()["messages"]
    assert [item["status"] for item in items] == ["queued"] * 5
    assert len({item["request_id"] for item in items}) == 5
    for n, item in enumerate(items):  # in order: the n-th answer is the n-th message's
        status = wait_final(client, item["request_id"])
        assert status["status"] == "sent"
        assert status["recipients"] == [f"user{n}@example.com"]
        assert status["tags"] == [f"n{n}"] and status["metadata"] == {"n": str(n)}
    wait_for(lambda: len(smtp_server.received) == 5)
    for received in smtp_server.received:
        n = int(received.message["Subject"].split()[1])
        assert received.rcpt_tos == [f"user{n}@example.com"]
        assert received.message.get_content().strip() == f"Hello {n}"
        assert received.message["Message-ID"].startswith(f"<{items[n]['request_id']}@")


def test_a_mixed_batch_is_207_with_an_answer_per_message_in_order(client, smtp_server):
    batch = [
        message(0),
        message(1, recipient="not-an-address"),
        message(2, text="both", body="x"),
        message(3, **{"from": OTHER_SENDER}),  # another key's sender: 403
        message(4, key=API_KEY),  # a message carries no key of its own
        ["not", "an", "object"],
        message(6, cc=["cc6@example.com"], tags=["a", "a"]),
        message(7),
    ]
    answer = post_batch(client, batch)
    assert answer.status_code == 207, answer.get_json()
    assert answer.mimetype == "application/json"
    items = answer.get_json()["messages"]
    assert len(items) == len(batch)
    assert [item["status"] for item in items] == ["queued", 400, 400, 403, 400, 400, 400, "queued"]
    fields = [[e["field"] for e in item.get("errors", [])] for item in items]
    assert fields[1] == ["recipient"], "fields named as in the message itself"
    assert fields[2] == ["body"] and "not both" in items[2]["errors"][0]["message"]
    assert "errors" not in items[3] and "`from`" in items[3]["detail"]
    assert fields[4] == ["key"] and "header" in items[4]["errors"][0]["message"]
    assert fields[5] == [] and "object" in items[5]["detail"]
    assert fields[6] == ["tags"]
    for item in items[1:7]:
        assert {"type", "title", "status", "detail"} <= item.keys() and "request_id" not in item
    assert API_KEY not in answer.get_data(as_text=True)
    for n in (0, 7):
        assert wait_final(client, items[n]["request_id"])["recipients"] == [f"user{n}@example.com"]
    wait_for(lambda: len(smtp_server.received) == 2)
    assert subjects(smtp_server) == ["batch 0", "batch 7"], "the refused were not sent"


def test_a_refused_messages_problem_is_what_send_email_answers_for_it_alone(client, smtp_server):
    refused = [
        message(0, recipient="nope"),
        message(1, cc=[f"c{n}@example.com" for n in range(60)]),  # past MAX_RECIPIENTS
        message(2, **{"from": OTHER_SENDER}),
        message(3, headers={"Bcc": "x@example.com"}, subject="a\r\nBcc: y@example.com"),
        message(4, metadata={"k": 1}),
    ]
    answer = post_batch(client, [*refused, message(9)])
    assert answer.status_code == 207
    for body, item in zip(refused, answer.get_json()["messages"], strict=False):
        alone = send(client, body)
        assert item == alone.get_json() and item["status"] == alone.status_code


def test_an_all_bad_batch_is_400_naming_each_message_and_sends_nothing(client, smtp_server):
    batch = [message(0, recipient="nope"), message(1, **{"from": OTHER_SENDER}), 42]
    answer = post_batch(client, batch)
    assert answer.status_code == 400 and answer.mimetype == PROBLEM
    body = answer.get_json()
    assert [e["field"] for e in body["errors"]] == [
        "messages.0.recipient",
        "messages.1",
        "messages.2",
    ]
    assert [item["status"] for item in body["messages"]] == [400, 403, 400]
    accepted = send(client, {"recipient": "last@example.com", "subject": "after", "body": "b"})
    assert wait_final(client, accepted.get_json()["request_id"])["status"] == "sent"
    assert subjects(smtp_server) == ["after"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [message(n) for n in range(4)]}, "messages"),  # BATCH_MAX is 3 here
        ({"messages": message(0)}, "messages"),
        ({"messages": None}, "messages"),
        ({}, "messages"),
        ({"messages": [message(0)], "subject": "top"}, "subject"),
        ({"messages": [message(0)], "key": 7}, "key"),
    ],
    ids=["empty", "over BATCH_MAX", "an object", "null", "missing", "unknown field", "key type"],
)
def test_a_body_that_is_not_a_batch_is_400_naming_the_field(make_app, smtp_server, body, field):
    client = make_app(smtp_server.port, batch_max=3).test_client()
    answer = client.post("/send-email/batch", json=body, headers=AUTH)
    assert answer.status_code == 400 and answer.mimetype == PROBLEM, answer.get_json()
    assert field in [e["field"] for e in answer.get_json()["errors"]]
    assert "messages" not in answer.get_json() or not isinstance(
        answer.get_json()["messages"], list
    )


def test_exactly_batch_max_messages_are_accepted(make_app, smtp_server):
    client = make_app(smtp_server.port, batch_max=3).test_client()
    answer = post_batch(client, [message(n) for n in range(3)])
    assert answer.status_code == 202
    wait_for(lambda: len(smtp_server.received) == 3)


def test_body_checks_are_those_of_send_email(make_app, smtp_server):
    client = make_app(smtp_server.port, max_request_bytes=400).test_client()
    raw = json.dumps({"messages": [message(0)]})
    as_text = client.post("/send-email/batch", data=raw, content_type="text/plain", headers=AUTH)
    assert as_text.status_code == 415 and as_text.mimetype == PROBLEM
    large = json.dumps({"messages": [message(n) for n in range(10)]})
    too_big = client.post(
        "/send-email/batch", data=large, content_type="application/json", headers=AUTH
    )
    assert too_big.status_code == 413
    twice = '{"messages": [], "messages": [' + json.dumps(message(0)) + "]}"
    duplicate = client.post(
        "/send-email/batch", data=twice, content_type="application/json", headers=AUTH
    )
    assert duplicate.status_code == 400 and "duplicate" in duplicate.get_json()["detail"]
    assert client.post("/send-email/batch", json={"messages": [message(0)]}).status_code == 401
    assert client.get("/send-email/batch").status_code == 405
    assert smtp_server.received == []


def test_the_key_may_be_given_once_at_the_top_of_the_batch(client, smtp_server):
    answer = client.post("/send-email/batch", json={"key": API_KEY, "messages": [message(0)]})
    assert answer.status_code == 202, answer.get_json()
    assert wait_final(client, answer.get_json()["messages"][0]["request_id"])["sender"] == SENDER


# -- the rate limit, per message ---------------------------------------------------------------


def test_a_batch_counts_once_per_message_and_one_past_the_limit_is_429_whole(make_app, smtp_server):
    client = make_app(smtp_server.port, rate_limit="6/minute").test_client()
    first = post_batch(client, [message(n) for n in range(3)])
    assert first.status_code == 202 and first.headers["X-RateLimit-Remaining"] == "3"
    single = send(client)
    assert single.status_code == 202 and single.headers["X-RateLimit-Remaining"] == "2"
    over = post_batch(client, [message(n) for n in range(10, 13)])  # 3 more: 7 > 6
    assert over.status_code == 429 and over.mimetype == PROBLEM
    assert "Retry-After" in over.headers
    ids = [item["request_id"] for item in first.get_json()["messages"]]
    for request_id in [*ids, single.get_json()["request_id"]]:
        wait_final(client, request_id)
    assert subjects(smtp_server) == ["Hi", "batch 0", "batch 1", "batch 2"], "nothing of it"


def test_the_limit_is_shared_with_the_single_routes(make_app, smtp_server):
    client = make_app(smtp_server.port, rate_limit="3/minute").test_client()
    assert post_batch(client, [message(0), message(1), message(2)]).status_code == 202
    assert send(client).status_code == 429


def test_a_batch_longer_than_a_per_second_limit_is_429_in_every_window(make_app, smtp_server):
    """API.md section 3, Batches, step 2: with `10/second;...`, 11 messages never fit a window;
    a refused batch counts only in the window that refused it (the per-second one)."""
    client = make_app(smtp_server.port, rate_limit="10/second;25/minute").test_client()
    eleven = [message(n) for n in range(100, 111)]
    windows: set[str] = set()

    def refused_in_three_windows() -> bool:
        over = post_batch(client, eleven)
        assert over.status_code == 429 and over.headers["X-RateLimit-Limit"] == "10"
        assert int(over.headers["Retry-After"]) <= 1, "the second's reset, which never helps"
        windows.add(over.headers["X-RateLimit-Reset"])
        return len(windows) >= 3

    wait_for(refused_in_three_windows)
    ten = [message(n) for n in range(10)]
    # 33 refused messages would be past 25 a minute: they were not counted there.
    accepted = wait_for(lambda: (answer := post_batch(client, ten)).status_code == 202 and answer)
    for item in accepted.get_json()["messages"]:
        wait_final(client, item["request_id"])
    assert subjects(smtp_server) == sorted(f"batch {n}" for n in range(10)), "none of the 11"


# -- Idempotency-Key -------------------------------------------------------------------------


def test_a_repeated_batch_gets_the_same_answer_and_sends_nothing_more(client, smtp_server):
    batch = [message(0), message(1, recipient="bad"), message(2)]
    headers = {"Idempotency-Key": "batch-1"}
    first = post_batch(client, batch, headers)
    assert first.status_code == 207
    for item in first.get_json()["messages"]:
        if "request_id" in item:
            wait_final(client, item["request_id"])
    again = client.post(  # re-spaced and with the key at the top: the same batch
        "/send-email/batch",
        data=json.dumps({"key": API_KEY, "messages": batch}, indent=2),
        content_type="application/json",
        headers=headers,
    )
    assert again.status_code == 207
    assert again.get_json() == first.get_json(), "the same ids and the same problems"
    other = post_batch(client, [message(0)], headers)
    assert other.status_code == 409 and other.mimetype == PROBLEM
    single = send(client, headers=headers)
    assert single.status_code == 409, "a batch's key is not a single request's"
    assert subjects(smtp_server) == ["batch 0", "batch 2"]
    assert smtp_server.handler.transactions == 2


def test_an_all_good_repeat_is_202_again(client, smtp_server):
    headers = {"Idempotency-Key": "batch-2"}
    first = post_batch(client, [message(0), message(1)], headers)
    again = post_batch(client, [message(0), message(1)], headers)
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.get_json() == first.get_json()
    wait_for(lambda: len(smtp_server.received) == 2)
    for item in first.get_json()["messages"]:
        wait_final(client, item["request_id"])
    assert len(smtp_server.received) == 2


def test_a_repeat_after_the_settings_changed_keeps_the_first_batchs_ids_and_sends_nothing(
    make_app, smtp_server, tmp_path
):
    """Two processes on one store, with different settings: what the first accepted keeps its
    id, what it refused is not sent by the repeat (409 in its place) even where it would pass."""
    url = f"sqlite:///{tmp_path / 'status.db'}"
    strict = make_app(
        smtp_server.port, status_store_url=url, max_recipients=1, allow_special_use_recipients=True
    ).test_client()
    lenient = make_app(smtp_server.port, status_store_url=url).test_client()
    batch = [message(0, cc=["cc@example.com"]), message(1, recipient="user@example.test")]
    headers = {"Idempotency-Key": "batch-settings"}
    first = post_batch(strict, batch, headers)
    assert [item["status"] for item in first.get_json()["messages"]] == [400, "queued"]
    kept = first.get_json()["messages"][1]["request_id"]
    assert wait_final(strict, kept)["status"] == "sent"
    again = post_batch(lenient, batch, headers)
    assert again.status_code == 207
    items = again.get_json()["messages"]
    assert items[0]["status"] == 409 and "new key" in items[0]["detail"]
    assert items[1] == {"request_id": kept, "status": "queued"}, "even though refused here now"
    assert post_batch(lenient, batch[1:]).status_code == 400, "as this process would refuse it"
    assert subjects(smtp_server) == ["batch 1"]


def test_a_repeat_of_which_no_message_passes_now_gets_the_first_answer(
    make_app, smtp_server, tmp_path
):
    """The first process accepted one message; on the second (stricter settings, one store)
    none would pass: the repeat is still the first answer, not a 400 saying nothing was
    accepted while it is being sent."""
    url = f"sqlite:///{tmp_path / 'status.db'}"
    lenient = make_app(smtp_server.port, status_store_url=url).test_client()
    strict = make_app(smtp_server.port, status_store_url=url, max_recipients=1).test_client()
    batch = [message(0, cc=["cc@example.com"]), message(1, recipient="bad")]
    headers = {"Idempotency-Key": "batch-none-now"}
    first = post_batch(lenient, batch, headers)
    assert first.status_code == 207
    kept = first.get_json()["messages"][0]["request_id"]
    assert post_batch(strict, batch).status_code == 400, "this process refuses every message"
    again = post_batch(strict, batch, headers)
    assert again.status_code == 207 and again.mimetype == "application/json"
    assert again.get_json() == first.get_json(), "the same id, the same problem"
    other = post_batch(strict, [*batch, message(2, recipient="bad")], headers)
    assert other.status_code == 400, "another body under the key: its fields answer first"
    assert wait_final(strict, kept)["status"] == "sent"
    assert subjects(smtp_server) == ["batch 0"]
    assert smtp_server.handler.transactions == 1


def test_an_all_bad_batch_records_no_idempotency_key(client, smtp_server):
    headers = {"Idempotency-Key": "batch-3"}
    assert post_batch(client, [message(0, recipient="bad")], headers).status_code == 400
    fixed = post_batch(client, [message(0)], headers)
    assert fixed.status_code == 202, "the key was not used by the refused batch"
    wait_final(client, fixed.get_json()["messages"][0]["request_id"])


def test_a_malformed_idempotency_key_is_400(client, smtp_server):
    answer = post_batch(client, [message(0)], {"Idempotency-Key": "x" * 256})
    assert answer.status_code == 400 and "Idempotency-Key" in answer.get_json()["detail"]


# -- one store round trip ----------------------------------------------------------------------


@pytest.mark.redis
def test_accepting_a_batch_of_100_is_one_redis_round_trip(
    make_app, smtp_server, redis_server, monkeypatch
):
    """Round trips counted at the client, on the request's own thread (the sending threads
    save statuses meanwhile on theirs)."""
    import redis

    app = make_app(smtp_server.port, status_store_url=redis_server.url)
    client = app.test_client()
    warm = post_batch(client, [message(0)])  # loads the store's script
    assert warm.status_code == 202
    # As under load, when the sending threads hold the pool's connections: a new one.
    app.extensions[EXTENSION].store.client.connection_pool.disconnect()
    here = threading.get_ident()
    sent: list[int] = []
    real_send = redis.connection.Connection.send_packed_command

    def counting_send(connection, command, check_health: bool = True) -> None:
        # A connection the pool opens for this thread (the sending threads may hold the
        # others) says HELLO, CLIENT SETINFO... first: its handshake is not the request's.
        packed = b"".join(command) if isinstance(command, list) else bytes(command)
        handshake = any(word in packed[:64].upper() for word in (b"HELLO", b"CLIENT", b"PING"))
        if threading.get_ident() == here and not handshake:
            sent.append(1)
        real_send(connection, command, check_health)

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counting_send)
    answer = post_batch(client, [message(n) for n in range(100)])
    monkeypatch.undo()
    assert answer.status_code == 202
    assert len(sent) == 1, f"{len(sent)} round trips to accept a batch of 100"
    ids = [item["request_id"] for item in answer.get_json()["messages"]]
    for request_id in ids:
        assert wait_final(client, request_id, timeout=30)["status"] == "sent"
    wait_for(lambda: len(smtp_server.received) == 101, timeout=30)


def test_a_batch_that_does_not_fit_the_queue_is_503_whole(make_app, smtp_server):
    client = make_app(smtp_server.port, queue_max=2).test_client()
    answer = post_batch(client, [message(n) for n in range(10, 13)])
    assert answer.status_code == 503 and answer.mimetype == PROBLEM
    assert "Retry-After" in answer.headers and "QUEUE_MAX" in answer.get_json()["detail"]
    accepted = post_batch(client, [message(0)])
    assert accepted.status_code == 202
    wait_final(client, accepted.get_json()["messages"][0]["request_id"])
    assert subjects(smtp_server) == ["batch 0"], "nothing of the refused batch"


# -- Acceptor.accept_many, without Flask -------------------------------------------------------


@pytest.fixture
def acceptor_parts(smtp_server, tmp_path):
    store = SqliteStatusStore(str(tmp_path / "status.db"), ttl=60)
    events = EventBus()
    seen: list[str] = []
    events.subscribe(lambda e: seen.append(e.record.request_id) if isinstance(e, Accepted) else 0)
    attempt = DeliveryAttempt(store, SmtpClient(5.0), events, max_attempts=2, retry_backoff=0.05)
    pool = WorkerPool(attempt, workers=2, queue_max=3)
    sender = Sender(SENDER, "", "127.0.0.1", smtp_server.port, "none")
    yield store, pool, Acceptor(store, pool, events), sender, seen
    pool.drain(5)
    attempt.smtp.close_all()
    store.close()


def stored(store: SqliteStatusStore) -> int:
    return store._db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]


def spec(n: int) -> tuple[MessageSpec, RequestExtras]:
    return (
        MessageSpec(recipient=(f"u{n}@example.com",), subject=f"s{n}", body="b"),
        RequestExtras(tags=(f"t{n}",)),
    )


def test_accept_many_records_dispatches_and_announces_in_order(acceptor_parts, smtp_server):
    store, pool, acceptor, sender, seen = acceptor_parts
    records = acceptor.accept_many([spec(0), None, spec(2)], sender, ("scope", "fp"))
    assert isinstance(records, list) and records[1] is None
    assert [r.recipients for r in records if r] == [("u0@example.com",), ("u2@example.com",)]
    assert seen == [r.request_id for r in records if r], "Accepted in the batch's order"
    for record in records:
        if record is not None:
            assert store.get(record.request_id).tags == record.tags  # type: ignore[union-attr]
            assert pool.wait(record.request_id, 10).status is EmailStatus.SENT  # type: ignore[union-attr]
    assert sorted(r.rcpt_tos[0] for r in smtp_server.received) == [
        "u0@example.com",
        "u2@example.com",
    ]

    again = acceptor.accept_many([spec(5), spec(6)], sender, ("scope", "fp-other"))
    assert isinstance(again, IdempotencyClaim) and again.fingerprint == "fp"
    assert again.places == (records[0].request_id, None, records[2].request_id)  # type: ignore[union-attr]
    assert len(seen) == 2 and stored(store) == 2, "a used key creates nothing"
    wait_for(lambda: pool.unfinished() == 0)  # the final save follows the answer to wait()
    assert len(smtp_server.received) == 2


def test_accept_many_needs_room_for_the_whole_batch(acceptor_parts, smtp_server):
    store, pool, acceptor, sender, seen = acceptor_parts
    with pytest.raises(Unavailable, match="QUEUE_MAX"):
        acceptor.accept_many([spec(n) for n in range(4)], sender)  # queue_max is 3
    assert stored(store) == 0 and seen == [] and pool.unfinished() == 0
    records = acceptor.accept_many([spec(n) for n in range(3)], sender)
    assert isinstance(records, list) and len(seen) == 3
    for record in records:
        assert pool.wait(record.request_id, 10) is not None  # type: ignore[union-attr]
