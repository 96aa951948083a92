"""The delivery seam: one attempt as plain code, events only after the owner saved, stored
requests that no longer load, requests stored by an older release."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from pathlib import Path

from mail_server import EXTENSION
from mailservice.delivery.attempt import AttemptState, DeliveryAttempt, Dropped, WaitForStore
from mailservice.delivery.message_spec import MessageSpec
from mailservice.delivery.smtp_client import SmtpClient
from mailservice.delivery.transitions import Final, Retry
from mailservice.events.bus import Accepted, Attempted, EventBus, Finished
from mailservice.senders import Sender
from mailservice.stores.contract import EmailStatus, StatusRecord, utcnow
from mailservice.stores.memory_store import MemoryStatusStore
from mailservice.stores.sqlite_store import SqliteStatusStore
from tests.conftest import SENDER, send, wait_final, wait_for


def queued(request_id: str, owner: str, *recipients: str) -> StatusRecord:
    now = utcnow()
    recipients = recipients or ("user@example.com",)
    return StatusRecord(
        request_id, EmailStatus.QUEUED, SENDER, recipients, recipients, now, now, owner=owner
    )


SPEC = MessageSpec(recipient=("user@example.com",), subject="Hi", body="Hello")


def attempt_for(store, port: int, events: EventBus | None = None) -> tuple[DeliveryAttempt, Sender]:
    sender = Sender(SENDER, "", "127.0.0.1", port, "none")
    attempt = DeliveryAttempt(
        store, SmtpClient(5.0), events or EventBus(), max_attempts=2, retry_backoff=1.0
    )
    return attempt, sender


# -- one attempt, without threads or Flask --------------------------------------------------


def test_an_attempt_records_sending_sends_and_answers_final(smtp_server):
    store = MemoryStatusStore(60)
    record = queued("r1", "me")
    store.create(record, SPEC.to_json())
    attempt, sender = attempt_for(store, smtp_server.port)
    state = AttemptState(record, SPEC.to_json())
    outcome = attempt.run(state, sender)
    assert isinstance(outcome.next, Final) and outcome.answered is True
    assert outcome.next.record.status is EmailStatus.SENT
    assert store.get("r1").status is EmailStatus.SENDING  # the final save is the caller's
    assert [r.rcpt_tos for r in smtp_server.received] == [["user@example.com"]]
    attempt.smtp.close_all()


def test_a_transient_failure_answers_retry_and_spends_one_attempt(smtp_server):
    smtp_server.handler.script("DATA", "451 4.3.0 later")
    store = MemoryStatusStore(60)
    record = queued("r1", "me")
    store.create(record, SPEC.to_json())
    attempt, sender = attempt_for(store, smtp_server.port)
    outcome = attempt.run(AttemptState(record, SPEC.to_json()), sender)
    assert isinstance(outcome.next, Retry)
    assert outcome.next.record.status is EmailStatus.RETRYING
    assert outcome.next.record.attempts == 1
    assert 0.75 <= outcome.next.delay <= 1.25


def test_an_attempt_on_a_request_owned_elsewhere_sends_nothing(smtp_server, tmp_path: Path):
    store = SqliteStatusStore(str(tmp_path / "s.db"), 60)
    record = queued("r1", "someone-else")
    store.create(record, SPEC.to_json())
    attempt, sender = attempt_for(store, smtp_server.port)
    outcome = attempt.run(AttemptState(replace(record, owner="me"), SPEC.to_json()), sender)
    assert isinstance(outcome.next, Dropped)
    assert smtp_server.handler.transactions == 0
    assert outcome.next.ended is None  # a process of its own owns it: warned about


def test_an_attempt_on_a_request_canceled_meanwhile_sends_nothing_and_says_so(smtp_server):
    store = MemoryStatusStore(60)  # the dispatcher holds the payload itself: the save refuses
    record = queued("r1", "me")
    store.create(record, SPEC.to_json())
    canceled = replace(record, status=EmailStatus.CANCELED, updated_at=utcnow())
    assert store.replace(canceled, record)
    attempt, sender = attempt_for(store, smtp_server.port)
    outcome = attempt.run(AttemptState(record, SPEC.to_json()), sender)
    assert isinstance(outcome.next, Dropped) and outcome.answered is None
    assert outcome.next.ended == canceled and "canceled" in outcome.next.reason
    assert store.get("r1") == canceled
    assert smtp_server.handler.transactions == 0


def test_a_store_that_refuses_sending_gets_a_wait_and_nothing_is_sent(smtp_server, tmp_path):
    store = SqliteStatusStore(str(tmp_path / "s.db"), 60)
    record = queued("r1", "me")
    store.create(record, SPEC.to_json())
    store.close()  # every call now fails: a store that is down
    attempt, sender = attempt_for(store, smtp_server.port)
    state = AttemptState(record, SPEC.to_json())
    outcome = attempt.run(state, sender)
    assert isinstance(outcome.next, WaitForStore) and outcome.answered is None
    assert state.record.attempts == 0  # no attempt spent
    assert smtp_server.handler.transactions == 0


def test_an_attempt_past_the_expiry_ends_expired_before_recording_or_sending(smtp_server):
    store = MemoryStatusStore(60)
    record = replace(queued("r1", "me"), expires_at=utcnow())
    store.create(record, SPEC.to_json())
    events, seen = EventBus(), []
    events.subscribe(seen.append)
    attempt, sender = attempt_for(store, smtp_server.port, events)
    outcome = attempt.run(AttemptState(record, SPEC.to_json()), sender)
    assert isinstance(outcome.next, Final) and outcome.answered is None
    final = outcome.next.record
    assert (final.status, final.error, final.attempts) == (
        EmailStatus.EXPIRED,
        "expired before it could be sent",
        0,
    )
    assert store.get("r1").status is EmailStatus.QUEUED, "no `sending` was recorded"
    assert smtp_server.handler.transactions == 0 and seen == []
    attempt.save_final(final)
    assert store.get("r1").status is EmailStatus.EXPIRED and store.payload("r1") is None
    assert [type(e) for e in seen] == [Finished]


def test_final_is_announced_only_once_saved_by_the_owner(tmp_path: Path):
    store = SqliteStatusStore(str(tmp_path / "s.db"), 60)
    events, seen = EventBus(), []
    events.subscribe(seen.append)
    mine, theirs = queued("mine", "me"), queued("theirs", "someone-else")
    for record in (mine, theirs):
        store.create(record, SPEC.to_json())
    attempt, _ = attempt_for(store, 1, events)
    attempt.save_final(replace(mine, status=EmailStatus.SENT))
    attempt.save_final(replace(theirs, owner="me", status=EmailStatus.SENT))  # lost it
    assert [(type(e), e.record.request_id) for e in seen] == [(Finished, "mine")]
    assert store.get("theirs").status is EmailStatus.QUEUED


def test_accepted_attempted_then_finished_reach_subscribers_in_order(make_app, smtp_server):
    app = make_app(smtp_server.port)
    service = app.extensions[EXTENSION]
    seen: list[tuple[str, str]] = []
    service.acceptor.events.subscribe(
        lambda e: seen.append((type(e).__name__, str(e.record.status)))
    )
    request_id = send(app.test_client()).get_json()["request_id"]
    wait_for(lambda: len(seen) == 3)
    # The attempt is announced with the status it leads to, before that status is saved.
    assert seen == [
        (Accepted.__name__, "queued"),
        (Attempted.__name__, "sent"),
        (Finished.__name__, "sent"),
    ]
    assert service.store.get(request_id).status is EmailStatus.SENT


# -- what recovery finds in the store -------------------------------------------------------


def orphan(store: SqliteStatusStore, request_id: str, payload: str) -> None:
    """A request left by a process that died: recorded, unfinished, its owner without a lease."""
    store.create(queued(request_id, "dead-process"), payload)


def test_a_stored_request_that_no_longer_loads_ends_failed_with_the_reason(
    make_app, smtp_server, tmp_path: Path
):
    url = tmp_path / "status.db"
    store = SqliteStatusStore(str(url), 60)
    broken = str(uuid.uuid4())
    orphan(store, broken, '{"v": 1, "recipient": "not-a-list", "subject": "x"}')
    store.close()
    app = make_app(smtp_server.port, status_store_url=f"sqlite:///{url}", lease_seconds=0.5)
    status = wait_final(app.test_client(), broken)
    assert status["status"] == "failed"
    assert status["error"].startswith("the stored request cannot be read:")
    assert smtp_server.received == []
    log = Path(app.extensions[EXTENSION].request_log.path)
    wait_for(lambda: f"Request ID: {broken}," in log.read_text(encoding="utf-8"))


def test_a_request_stored_by_an_older_release_is_still_sent(make_app, smtp_server, tmp_path):
    url = tmp_path / "status.db"
    store = SqliteStatusStore(str(url), 60)
    version_0 = json.dumps(
        {
            "recipient": ["user@example.com"], "cc": [], "bcc": [], "subject": "Old",
            "body": "From before the upgrade", "is_html": False, "text": None, "html": None,
            "from_name": None, "from": None, "reply_to": None, "headers": {},
        }
    )  # fmt: skip
    old_one = str(uuid.uuid4())
    orphan(store, old_one, version_0)
    store.close()
    app = make_app(smtp_server.port, status_store_url=f"sqlite:///{url}", lease_seconds=0.5)
    assert wait_final(app.test_client(), old_one)["status"] == "sent"
    assert smtp_server.received[0].message["Subject"] == "Old"
