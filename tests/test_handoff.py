"""The hand-over to the broker without Celery: the Handoff thread (order, outages, delays,
close) and the CeleryDispatcher around it, over a real SQLite store.

`publish` is where Celery plugs in; here a `Broker` records each hand-over it takes, or
refuses every one while `down` is set, as a broker that cannot be reached.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from mailservice.delivery import handoff as handoff_module
from mailservice.delivery.attempt import DeliveryAttempt
from mailservice.delivery.celery_dispatcher import CeleryDispatcher
from mailservice.delivery.handoff import Handoff, Handover
from mailservice.delivery.smtp_client import SmtpClient
from mailservice.errors import Unavailable
from mailservice.events.bus import EventBus
from mailservice.senders import Sender
from mailservice.stores.contract import EmailStatus, StatusRecord, utcnow
from mailservice.stores.sqlite_store import SqliteStatusStore
from tests.conftest import SENDER, wait_for

HANDOFF_LOGGER = "mailservice.delivery.handoff"


class Broker:
    """A `publish` callable: records what it takes; refuses everything while `down` is set."""

    def __init__(self) -> None:
        self.down = threading.Event()
        self.published: list[Handover] = []
        self.tried: list[Handover] = []  # every call, refused or not, in order
        self._lock = threading.Lock()

    def __call__(self, handover: Handover) -> None:
        with self._lock:
            self.tried.append(handover)
        if self.down.is_set():
            raise ConnectionRefusedError("[Errno 111] Connection refused")
        with self._lock:
            self.published.append(handover)

    def refusals(self) -> int:
        with self._lock:
            return len(self.tried) - len(self.published)


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retry a refused publish within milliseconds, so an outage costs the test no time."""
    monkeypatch.setattr(handoff_module, "BACKOFF_FIRST", 0.01)
    monkeypatch.setattr(handoff_module, "BACKOFF_MAX", 0.05)


@pytest.fixture
def broker() -> Broker:
    return Broker()


@pytest.fixture
def handoff(broker: Broker):
    handoff = Handoff(broker)
    yield handoff
    handoff.close(0)


def handovers(count: int, owner: str = "api") -> list[Handover]:
    return [Handover(f"r{n}", owner) for n in range(count)]


# -- Handoff --------------------------------------------------------------------------------


def test_hand_overs_are_published_in_the_order_put(handoff: Handoff, broker: Broker) -> None:
    for handover in handovers(20):
        assert handoff.put(handover) is True
    wait_for(lambda: len(broker.published) == 20)
    assert broker.published == handovers(20)
    assert len(handoff) == 0


def test_a_refused_hand_over_is_tried_again_before_any_later_one(
    handoff: Handoff, broker: Broker
) -> None:
    broker.down.set()
    for handover in handovers(3):
        handoff.put(handover)
    wait_for(lambda: broker.refusals() >= 5)
    assert set(broker.tried) == {Handover("r0", "api")}, "only the first, again and again"
    assert len(handoff) == 3
    broker.down.clear()
    wait_for(lambda: len(broker.published) == 3)
    assert broker.published == handovers(3), "the order is kept across the outage"
    assert len(handoff) == 0


def test_an_outage_is_logged_once_at_its_start_and_once_at_its_end(
    handoff: Handoff, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger=HANDOFF_LOGGER):
        broker.down.set()
        handoff.put(Handover("r0", "api"))
        wait_for(lambda: broker.refusals() >= 10)
        broker.down.clear()
        wait_for(lambda: len(broker.published) == 1)
        handoff.put(Handover("r1", "api"))  # published with the broker up: nothing logged
        wait_for(lambda: len(broker.published) == 2)
    lines = [r.getMessage() for r in caplog.records if r.name == HANDOFF_LOGGER]
    assert len([line for line in lines if line.startswith("broker unreachable")]) == 1, lines
    assert lines.count("broker reachable again") == 1, lines
    assert "Connection refused" in lines[0], "the down line names the broker's error"


def test_a_long_outage_is_recalled_with_how_many_wait(
    handoff: Handoff, broker: Broker, caplog: pytest.LogCaptureFixture, monkeypatch
) -> None:
    monkeypatch.setattr(handoff_module, "REMIND_EVERY", 0.1)
    with caplog.at_level(logging.WARNING, logger=HANDOFF_LOGGER):
        broker.down.set()
        for handover in handovers(3):
            handoff.put(handover)

        def reminded() -> list[str]:
            lines = [r.getMessage() for r in caplog.records if r.name == HANDOFF_LOGGER]
            return [line for line in lines if line.startswith("broker still unreachable")]

        line = wait_for(reminded)[0]
        broker.down.clear()
    assert "3 request(s) waiting" in line and "Connection refused" in line
    wait_for(lambda: len(broker.published) == 3)


def test_a_delayed_hand_over_is_published_only_after_its_delay(
    handoff: Handoff, broker: Broker
) -> None:
    handoff.put(Handover("later", "w1"), delay=2.0)
    handoff.put(Handover("now", "api"))
    wait_for(lambda: Handover("now", "api") in broker.published)
    assert Handover("later", "w1") not in broker.published, "published before its delay"
    assert len(handoff) == 1, "a delayed hand-over counts as not yet published"
    wait_for(lambda: Handover("later", "w1") in broker.published)
    assert broker.published == [Handover("now", "api"), Handover("later", "w1")]
    assert len(handoff) == 0


def test_len_counts_what_is_not_yet_published(handoff: Handoff, broker: Broker) -> None:
    broker.down.set()
    for handover in handovers(4):
        handoff.put(handover)
    handoff.put(Handover("delayed", "api"), delay=60)
    assert len(handoff) == 5
    wait_for(lambda: broker.refusals() >= 1)
    assert len(handoff) == 5, "the one being tried is not published yet either"
    broker.down.clear()
    wait_for(lambda: len(handoff) == 1)
    assert len(broker.published) == 4


def test_close_while_the_broker_is_down_says_how_many_were_left_and_stops(broker: Broker) -> None:
    handoff = Handoff(broker)
    broker.down.set()
    for handover in handovers(3):
        handoff.put(handover)
    handoff.put(Handover("delayed", "api"), delay=60)
    wait_for(lambda: broker.refusals() >= 1)
    assert handoff.close(0.2) == 4
    assert not handoff._thread.is_alive(), "the publishing thread stopped"
    tried = len(broker.tried)
    broker.down.clear()
    assert handoff.put(Handover("late", "api")) is False, "closed: not taken"
    assert len(handoff) == 0
    assert len(broker.tried) == tried and broker.published == []


def test_close_with_the_broker_up_publishes_what_is_due_first(broker: Broker) -> None:
    handoff = Handoff(broker)
    for handover in handovers(50):
        handoff.put(handover)
    handoff.put(Handover("delayed", "api"), delay=60)  # not due: left for recovery
    assert handoff.close(10) == 1
    assert broker.published == handovers(50)


def test_put_after_close_returns_false(broker: Broker) -> None:
    handoff = Handoff(broker)
    assert handoff.close(1) == 0
    assert handoff.put(Handover("r0", "api")) is False
    assert handoff.put(Handover("r1", "api"), delay=1) is False
    assert len(handoff) == 0 and broker.tried == []


# -- CeleryDispatcher -----------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path):
    store = SqliteStatusStore(str(tmp_path / "status.db"), 60)
    yield store
    store.close()


@pytest.fixture
def make_dispatcher(store: SqliteStatusStore, broker: Broker):
    made: list[CeleryDispatcher] = []

    def make(**options) -> CeleryDispatcher:
        attempt = DeliveryAttempt(store, SmtpClient(5.0), EventBus(), max_attempts=3)
        dispatcher = CeleryDispatcher(attempt, broker, **options)
        made.append(dispatcher)
        return dispatcher

    yield make
    for dispatcher in made:
        dispatcher.drain(0)


def queued(request_id: str, owner: str) -> StatusRecord:
    now = utcnow()
    recipients = ("user@example.com",)
    return StatusRecord(
        request_id, EmailStatus.QUEUED, SENDER, recipients, recipients, now, now, owner=owner
    )


SENDER_AT_NOWHERE = Sender(SENDER, "", "127.0.0.1", 1, "none")  # never connected to here


def test_check_room_refuses_only_after_drain(make_dispatcher, broker: Broker) -> None:
    dispatcher = make_dispatcher(queue_max=2)
    broker.down.set()
    for n in range(5):  # more waiting than QUEUE_MAX: the broker is the queue, not this process
        dispatcher.later(f"r{n}")
        dispatcher.check_room(10**9)
    assert dispatcher.drain(0.1) == 5
    with pytest.raises(Unavailable, match="shutting down"):
        dispatcher.check_room()


def test_submit_hands_the_request_over_from_its_own_owner(
    make_dispatcher, store: SqliteStatusStore, broker: Broker
) -> None:
    dispatcher = make_dispatcher(owner="api-1")
    record = queued("r1", "api-1")
    store.create(record, "{}")
    dispatcher.submit(record, "{}", SENDER_AT_NOWHERE)
    wait_for(lambda: broker.published)
    assert broker.published == [Handover("r1", "api-1")]
    assert store.get("r1") == record, "handing over changes nothing in the store"


def test_a_generated_owner_is_the_one_handed_over_from(make_dispatcher, broker: Broker) -> None:
    one, two = make_dispatcher(), make_dispatcher()
    assert one.owner and one.owner != two.owner
    one.submit(queued("r1", one.owner), "{}", SENDER_AT_NOWHERE)
    wait_for(lambda: broker.published)
    assert broker.published == [Handover("r1", one.owner)]


def test_resume_without_a_sender_ends_the_request_failed_in_the_store(
    make_dispatcher, store: SqliteStatusStore, broker: Broker
) -> None:
    dispatcher = make_dispatcher(owner="w1")
    record = queued("r1", "w1")  # claimed by this process from a dead one
    store.create(record, "{}")
    dispatcher.resume(record, "{}", None)
    saved = store.get("r1")
    assert saved is not None and saved.status is EmailStatus.FAILED
    assert saved.error == "its sender is no longer configured"
    assert dispatcher.handoff.flush(1) and broker.tried == [], "nothing handed over"


def test_resume_with_a_sender_hands_it_over(
    make_dispatcher, store: SqliteStatusStore, broker: Broker
) -> None:
    dispatcher = make_dispatcher(owner="w1")
    record = queued("r1", "w1")
    store.create(record, "{}")
    dispatcher.resume(record, "{}", SENDER_AT_NOWHERE)
    wait_for(lambda: broker.published)
    assert broker.published == [Handover("r1", "w1")]
    assert store.get("r1").status is EmailStatus.QUEUED


def left_sending(store: SqliteStatusStore) -> StatusRecord:
    """A request a dead process left `sending`, now claimed by "w1": it may have been handed
    to the SMTP server."""
    record = replace(queued("r1", "w1"), status=EmailStatus.SENDING, attempts=1)
    store.create(record, "{}")
    return record


def test_a_request_resumed_from_sending_is_handed_over_as_possibly_delivered(
    make_dispatcher, store: SqliteStatusStore, broker: Broker
) -> None:
    dispatcher = make_dispatcher(owner="w1")
    dispatcher.resume(left_sending(store), "{}", SENDER_AT_NOWHERE)
    wait_for(lambda: broker.published)
    assert broker.published == [Handover("r1", "w1", True)]


def test_a_request_resumed_from_sending_without_its_sender_fails_as_possibly_delivered(
    make_dispatcher, store: SqliteStatusStore, broker: Broker
) -> None:
    dispatcher = make_dispatcher(owner="w1")
    dispatcher.resume(left_sending(store), "{}", None)
    saved = store.get("r1")
    assert saved is not None and saved.status is EmailStatus.FAILED
    assert saved.error == (
        "its sender is no longer configured; an earlier attempt was possibly delivered "
        "(same Message-ID)"
    )


def test_room_stays_queue_max_while_the_broker_is_away_and_is_none_after_drain(
    make_dispatcher, broker: Broker
) -> None:
    # A batch is refused only when the store is (API.md section 13): hand-overs waiting for
    # the broker do not shrink the room accept_many() checks.
    dispatcher = make_dispatcher(queue_max=3)
    assert dispatcher.room() == 3
    broker.down.set()
    for n in range(5):
        dispatcher.later(f"r{n}")
    assert len(dispatcher.handoff) == 5
    assert dispatcher.room() == 3
    broker.down.clear()
    dispatcher.drain(5)
    assert dispatcher.room() == 0


def test_stats_count_waiting_hand_overs_and_busy_attempts(make_dispatcher, broker: Broker) -> None:
    dispatcher = make_dispatcher(threads=1)
    broker.down.set()
    dispatcher.later("r0")
    dispatcher.later("r1")
    stats = dispatcher.stats()
    assert (stats.unfinished, stats.held_bytes, stats.busy, stats.threads) == (2, 0, 0, 1)
    with dispatcher.sending():
        assert dispatcher.stats().busy == 1
        with dispatcher.sending():
            assert dispatcher.stats().busy == 2
    assert dispatcher.stats().busy == 0
    with pytest.raises(RuntimeError), dispatcher.sending():
        raise RuntimeError("an attempt that blew up")
    assert dispatcher.stats().busy == 0, "counted down however the attempt ended"
    assert dispatcher.unfinished() == 2


def test_wait_returns_the_final_record_from_the_store(
    make_dispatcher, store: SqliteStatusStore
) -> None:
    dispatcher = make_dispatcher(owner="api-1")
    record = queued("r1", "elsewhere")  # held by a worker process, not by this one
    store.create(record, "{}")
    assert dispatcher.wait("r1", 0.05) is None, "not final yet"
    sent = StatusRecord(
        "r1", EmailStatus.SENT, SENDER, record.recipients, (), record.created_at, utcnow(),
        attempts=1, owner="elsewhere",
    )  # fmt: skip
    saver = threading.Timer(0.2, store.save, (sent,))
    saver.start()
    try:
        final = dispatcher.wait("r1", 10)
    finally:
        saver.join()
    assert final is not None and final.status is EmailStatus.SENT and final.attempts == 1
    assert final == store.get("r1")
    assert dispatcher.wait("unknown", 1) is None
