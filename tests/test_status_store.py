"""The store contract: one behaviour suite that every backend must pass, on real servers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from mailservice.errors import ConfigError, StoreError
from mailservice.stores import store_from_url
from mailservice.stores.contract import (
    IDEMPOTENCY_TTL,
    EmailStatus,
    IdempotencyClaim,
    StatusRecord,
    StatusStore,
    WebhookState,
    utcnow,
)
from mailservice.stores.listing import (
    CHART_MINUTES,
    MINUTES_KEPT,
    PAGE_MAX,
    MinuteSends,
    RecentPage,
    Search,
    minute_of,
    sort_key,
)
from mailservice.stores.memory_store import MemoryStatusStore
from tests.conftest import STATUS_KEYS, wait_for


class FakeClock:
    """A monotonic clock a test moves by hand (for the memory store's TTL)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def clocked_store(
    kind: str, tmp_path, clock: FakeClock, ttl: int = 60, failed_content_ttl: int = 30
) -> StatusStore:
    """A memory or SQLite store (a TTL of 60 s, failed content kept 30 s) that reads `clock`."""
    from mailservice.stores.sqlite_store import SqliteStatusStore

    if kind == "memory":
        return MemoryStatusStore(ttl=ttl, clock=clock, failed_content_ttl=failed_content_ttl)
    path = str(tmp_path / "s.db")
    return SqliteStatusStore(path, ttl=ttl, clock=clock, failed_content_ttl=failed_content_ttl)


def open_store(
    kind: str, request: pytest.FixtureRequest, ttl: int = 60, failed_content_ttl: int = 3600
) -> StatusStore:
    if kind == "memory":
        url = "memory://"
    elif kind == "sqlite":
        url = f"sqlite:///{request.getfixturevalue('tmp_path') / 'status.db'}"
    else:
        url = request.getfixturevalue("redis_server").url
    return store_from_url(url, ttl=ttl, failed_content_ttl=failed_content_ttl)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[StatusStore]:
    backend = open_store(request.param, request)
    yield backend
    backend.close()


@pytest.fixture(params=["sqlite", "redis"])
def durable_pair(request: pytest.FixtureRequest) -> Iterator[tuple[StatusStore, StatusStore]]:
    """Two store objects on one durable store, as two processes would have."""
    first, second = open_store(request.param, request), open_store(request.param, request)
    yield first, second
    first.close()
    second.close()


def new_record(
    request_id: str = "11111111-1111-4111-8111-111111111111", owner: str = "p1"
) -> StatusRecord:
    now = utcnow()
    return StatusRecord(
        owner=owner,
        request_id=request_id,
        status=EmailStatus.QUEUED,
        sender="sender@example.com",
        recipients=("a@example.com", "b@example.com"),
        pending=("a@example.com", "b@example.com"),
        created_at=now,
        updated_at=now,
    )


def test_created_record_reads_back_equal(store: StatusStore) -> None:
    record = new_record()
    store.create(record, '{"subject": "s"}')
    assert store.get(record.request_id) == record
    assert store.payload(record.request_id) == '{"subject": "s"}'


def test_client_fields_and_webhook_state_read_back_equal(store: StatusStore) -> None:
    record = replace(
        new_record(),
        metadata={"order": "42", "ünïcode": "välue"},
        tags=("invoice", "eu-west"),
        callback_url="https://hooks.example.com/mail?token=t",
        webhook=WebhookState.PENDING,
    )
    store.create(record, "{}")
    assert store.get(record.request_id) == record
    final = replace(record, status=EmailStatus.SENT, pending=(), webhook=WebhookState.DELIVERED)
    store.save(final)
    assert store.get(record.request_id) == final
    public = final.public()
    assert public["tags"] == ["invoice", "eu-west"] and public["webhook"] == "delivered"
    assert "hooks.example.com" not in str(public), "the callback URL is internal"


def test_send_at_and_expires_at_read_back_equal_and_stay_out_of_the_public_view(
    store: StatusStore,
) -> None:
    send_at = datetime(2026, 12, 1, 12, 0, 30, 123456, tzinfo=UTC)
    record = replace(
        new_record(), send_at=send_at, expires_at=send_at + timedelta(hours=1, microseconds=1)
    )
    store.create(record, "{}")
    got = store.get(record.request_id)
    assert got == record and got.send_at == send_at
    assert got.expires_at is not None and got.expires_at.utcoffset() == timedelta(0)
    assert set(got.public()) == STATUS_KEYS
    # Given with another offset, the same moments read back (in UTC).
    elsewhere = timezone(timedelta(hours=2))
    moved = replace(record, send_at=send_at.astimezone(elsewhere), attempts=1)
    assert store.save(moved)
    assert store.get(record.request_id) == moved
    final = replace(moved, status=EmailStatus.SENT, pending=(), expires_at=None)
    assert store.save(final)
    assert store.get(record.request_id) == final
    assert store.get(record.request_id).expires_at is None  # type: ignore[union-attr]


def test_unknown_id_reads_none(store: StatusStore) -> None:
    assert store.get("00000000-0000-4000-8000-000000000000") is None
    assert store.payload("00000000-0000-4000-8000-000000000000") is None


def test_get_many_reads_the_known_records_and_leaves_out_the_others(store: StatusStore) -> None:
    queued, finished = new_record(), new_record("22222222-2222-4222-8222-222222222222")
    store.create_many([(queued, "{}"), (finished, "{}")])
    sent = replace(finished, status=EmailStatus.SENT, pending=())
    assert store.save(sent)
    unknown = "00000000-0000-4000-8000-000000000000"
    asked = [finished.request_id, unknown, queued.request_id, finished.request_id]
    assert store.get_many(asked) == {queued.request_id: queued, finished.request_id: sent}
    assert store.get_many([unknown]) == {}
    assert store.get_many([]) == {}


def test_get_many_reads_more_ids_than_one_sqlite_statement_takes(store: StatusStore) -> None:
    records = batch_records(1200)  # more than two of SQLite's chunks of 500
    store.create_many([(record, "{}") for record in records])
    found = store.get_many([record.request_id for record in records])
    assert found == {record.request_id: record for record in records}


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_get_many_leaves_out_an_expired_status(kind: str, tmp_path) -> None:
    clock = FakeClock()
    store = clocked_store(kind, tmp_path, clock)
    record = new_record()
    store.create(record, "{}")
    store.save(replace(record, status=EmailStatus.FAILED, pending=(), error="550"))
    assert set(store.get_many([record.request_id])) == {record.request_id}
    clock.now += 61  # past the TTL of 60 s
    assert store.get_many([record.request_id]) == {}
    store.close()


def test_saved_changes_read_back(store: StatusStore) -> None:
    record = new_record()
    store.create(record, "{}")
    changed = replace(
        record,
        status=EmailStatus.RETRYING,
        attempts=2,
        error="451 4.3.0 try later",
        pending=("b@example.com",),
        refused={"a@example.com": "550 no such user"},
        updated_at=record.updated_at + timedelta(seconds=3),
    )
    store.save(changed)
    assert store.get(record.request_id) == changed
    assert store.payload(record.request_id) == "{}", "payload kept until final"


def test_final_record_drops_payload_keeps_status(store: StatusStore) -> None:
    record = new_record()
    store.create(record, '{"body": "secret content"}')
    final = replace(record, status=EmailStatus.SENT, attempts=1, pending=())
    store.save(final)
    assert store.get(record.request_id) == final
    assert store.payload(record.request_id) is None


@pytest.mark.parametrize("final_status", sorted(s for s in EmailStatus if s.final))
def test_a_final_status_is_never_replaced_by_another_but_may_be_saved_again(
    store: StatusStore, final_status: EmailStatus
) -> None:
    record = replace(new_record(), webhook=WebhookState.PENDING)
    store.create(record, '{"body": "b"}')
    final = replace(record, status=final_status, pending=(), error="ended")
    assert store.save(final) is True
    counts = store.counts()
    for status in EmailStatus:
        if status is not final_status:
            other = replace(final, status=status, attempts=5, updated_at=utcnow(), send_at=T0)
            assert store.save(other) is False, f"{final_status} -> {status}"
    assert store.get(record.request_id) == final, "nothing written"
    assert store.payload(record.request_id) is None
    assert store.counts() == counts, "no count moved"
    outcome = replace(final, webhook=WebhookState.DELIVERED)
    assert store.save(outcome) is True, "the same final status again: a webhook's outcome"
    assert store.get(record.request_id) == outcome


def test_timestamps_are_utc(store: StatusStore) -> None:
    record = new_record()
    store.create(record, "{}")
    got = store.get(record.request_id)
    assert got is not None
    assert got.created_at.utcoffset() == timedelta(0)
    assert got.public()["created_at"].endswith("Z")


def test_public_view_has_no_content_or_internals(store: StatusStore) -> None:
    record = new_record()
    store.create(record, '{"subject": "private subject"}')
    got = store.get(record.request_id)
    assert got is not None
    public = got.public()
    assert set(public) == STATUS_KEYS
    assert "private subject" not in str(public)


def test_many_threads_write_distinct_records(store: StatusStore) -> None:
    ids = [f"22222222-2222-4222-8222-{i:012d}" for i in range(200)]

    def write(chunk: list[str]) -> None:
        for request_id in chunk:
            store.create(new_record(request_id), "{}")
            store.save(replace(new_record(request_id), status=EmailStatus.SENT, pending=()))

    threads = [threading.Thread(target=write, args=(ids[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(store.get(i).status is EmailStatus.SENT for i in ids)  # type: ignore[union-attr]


def test_ping_answers(store: StatusStore) -> None:
    store.ping()


def test_memory_store_expires_final_records_after_ttl() -> None:
    clock = FakeClock()
    store = MemoryStatusStore(ttl=60, clock=clock)
    done, open_ = (
        new_record("33333333-3333-4333-8333-000000000001"),
        new_record("33333333-3333-4333-8333-000000000002"),
    )
    store.create(done, "{}")
    store.create(open_, "{}")
    store.save(replace(done, status=EmailStatus.FAILED, error="550 no"))
    clock.now += 59
    assert store.get(done.request_id) is not None
    clock.now += 2
    assert store.get(done.request_id) is None
    assert store.get(open_.request_id) is not None, "unfinished requests never expire"


def test_unknown_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="STATUS_STORE_URL"):
        store_from_url("postgres://localhost/x", ttl=60)


def test_idempotency_claim_is_set_once(store: StatusStore) -> None:
    first = new_record("44444444-4444-4444-8444-000000000001")
    claim = IdempotencyClaim("scope-1", "fingerprint-a", first.request_id)
    assert store.create(first, "{}", claim) is None
    second = new_record("44444444-4444-4444-8444-000000000002")
    earlier = store.create(
        second, "{}", IdempotencyClaim("scope-1", "fingerprint-b", second.request_id)
    )
    assert earlier == claim
    assert store.get(second.request_id) is None, "a repeated key creates nothing"
    third = new_record("44444444-4444-4444-8444-000000000003")
    assert store.create(third, "{}", IdempotencyClaim("scope-2", "f", third.request_id)) is None


def test_idempotency_claim_reads_a_claim_and_sets_none(store: StatusStore) -> None:
    assert store.idempotency_claim("scope-r") is None
    record = new_record("44444444-4444-4444-8444-000000000004")
    claim = IdempotencyClaim("scope-r", "fp-r", record.request_id)
    assert store.create(record, "{}", claim) is None, "the look-up claimed nothing"
    assert store.idempotency_claim("scope-r") == claim
    batch = batch_records(2)
    places = IdempotencyClaim.of_batch("scope-rb", "fp-rb", [batch[0].request_id, None])
    store.create_many([(batch[0], "{}")], places)
    assert store.idempotency_claim("scope-rb") == places
    assert store.idempotency_claim("scope-other") is None


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_idempotency_claim_reads_none_once_the_claim_expired(kind: str, tmp_path) -> None:
    clock = FakeClock()
    store = clocked_store(kind, tmp_path, clock)
    record = new_record()
    claim = IdempotencyClaim("scope-x", "fp", record.request_id)
    store.create(record, "{}", claim)
    clock.now += IDEMPOTENCY_TTL - 1
    assert store.idempotency_claim("scope-x") == claim
    clock.now += 2
    assert store.idempotency_claim("scope-x") is None
    store.close()


@pytest.mark.redis
def test_redis_idempotency_claim_expires_with_its_key(redis_server) -> None:
    import redis

    store = store_from_url(redis_server.url, ttl=60)
    record = new_record()
    store.create(record, "{}", IdempotencyClaim("scope-x", "fp", record.request_id))
    client = redis.Redis.from_url(redis_server.url)
    assert 0 < client.ttl("mail:idem:scope-x") <= IDEMPOTENCY_TTL
    client.pexpire("mail:idem:scope-x", 50)
    wait_for(lambda: store.idempotency_claim("scope-x") is None, timeout=5)
    client.close()
    store.close()


def test_sqlite_idempotency_claim_is_one_statement_without_a_write_lock(tmp_path) -> None:
    store = store_from_url(f"sqlite:///{tmp_path / 's.db'}", ttl=60)
    record = new_record()
    store.create(record, "{}", IdempotencyClaim("scope-1", "fp", record.request_id))
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)  # type: ignore[attr-defined]
    assert store.idempotency_claim("scope-1") is not None
    store._db.set_trace_callback(None)  # type: ignore[attr-defined]
    assert len(statements) == 1 and statements[0].startswith("SELECT"), statements
    store.close()


@pytest.mark.redis
def test_redis_idempotency_claim_is_one_round_trip(redis_server, monkeypatch) -> None:
    import redis

    store = store_from_url(redis_server.url, ttl=60)
    record = new_record()
    store.create(record, "{}", IdempotencyClaim("scope-1", "fp", record.request_id))
    sent: list[bytes] = []
    real_send = redis.connection.Connection.send_packed_command

    def counting_send(connection, command, check_health: bool = True) -> None:
        sent.append(command)
        real_send(connection, command, check_health)

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counting_send)
    claim = store.idempotency_claim("scope-1")
    monkeypatch.undo()
    assert claim == IdempotencyClaim("scope-1", "fp", record.request_id)
    assert len(sent) == 1, "one round trip"
    store.close()


def test_durable_stores_say_so(store: StatusStore) -> None:
    assert store.durable is (not isinstance(store, MemoryStatusStore))


def test_save_by_a_process_that_lost_the_request_writes_nothing(durable_pair) -> None:
    first, second = durable_pair
    record = new_record(owner="dead-process")
    first.create(record, "{}")
    assert second.orphans(10) == [record.request_id], "an owner with no lease is dead"
    claimed = second.claim(record.request_id, "live-process")
    assert claimed is not None
    taken, payload = claimed
    assert taken.owner == "live-process" and payload == "{}"
    stale = replace(record, status=EmailStatus.SENDING, attempts=1)
    assert first.save(stale) is False
    assert second.get(record.request_id).status is EmailStatus.QUEUED  # type: ignore[union-attr]
    assert second.save(replace(taken, status=EmailStatus.SENT, pending=())) is True


def test_a_live_lease_protects_a_request(durable_pair) -> None:
    first, second = durable_pair
    first.heartbeat("p1", 30)
    record = new_record(owner="p1")
    first.create(record, "{}")
    assert second.orphans(10) == []
    assert second.claim(record.request_id, "p2") is None
    first.heartbeat("p1", 0)  # given up at shutdown
    assert second.orphans(10) == [record.request_id]


def assert_each_claimed_once(
    first: StatusStore, second: StatusStore, ids: list[str], method: str
) -> None:
    """Two live processes race `method` (claim or claim_webhook) over `ids`: every id is won,
    and none by both."""
    first.heartbeat("a", 30)
    second.heartbeat("b", 30)
    wins: dict[str, list[str]] = {"a": [], "b": []}

    def claim_all(store: StatusStore, owner: str) -> None:
        for request_id in ids:
            if getattr(store, method)(request_id, owner) is not None:
                wins[owner].append(request_id)

    threads = [
        threading.Thread(target=claim_all, args=(first, "a")),
        threading.Thread(target=claim_all, args=(second, "b")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(wins["a"] + wins["b"]) == sorted(ids)
    assert not set(wins["a"]) & set(wins["b"])


def test_only_one_of_two_claimants_wins(durable_pair) -> None:
    first, second = durable_pair
    ids = [f"55555555-5555-4555-8555-{i:012d}" for i in range(50)]
    for request_id in ids:
        first.create(new_record(request_id, owner="dead"), "{}")
    assert_each_claimed_once(first, second, ids, "claim")


def test_finished_requests_are_not_orphans(durable_pair) -> None:
    first, second = durable_pair
    record = new_record(owner="dead")
    first.create(record, "{}")
    first.save(replace(record, status=EmailStatus.FAILED, error="550", pending=()))
    assert second.orphans(10) == []
    assert second.claim(record.request_id, "p2") is None


# -- take: a request handed over by name (a task on a broker carries its `from_owner`) -------


def test_take_by_the_owner_named_in_the_hand_over_moves_the_request(store: StatusStore) -> None:
    record = new_record(owner="api")
    store.create(record, '{"subject": "s"}')
    taken = store.take(record.request_id, "api", "worker")
    assert taken == (replace(record, owner="worker"), '{"subject": "s"}')
    assert store.get(record.request_id) == replace(record, owner="worker")
    stale = replace(record, status=EmailStatus.SENDING, attempts=1)
    assert store.save(stale) is False, "the old owner lost it"
    assert store.get(record.request_id).status is EmailStatus.QUEUED  # type: ignore[union-attr]
    assert store.save(replace(taken[0], status=EmailStatus.SENT, pending=())) is True
    assert store.get(record.request_id).status is EmailStatus.SENT  # type: ignore[union-attr]


def test_take_from_another_owner_or_of_a_final_or_unknown_request_changes_nothing(
    store: StatusStore,
) -> None:
    record = new_record(owner="api")
    store.create(record, "{}")
    assert store.take(record.request_id, "someone-else", "worker") is None
    assert store.get(record.request_id) == record and store.payload(record.request_id) == "{}"
    # A redelivered task, after another worker took the request: its hand-over is spent.
    assert store.take(record.request_id, "api", "worker-1") is not None
    assert store.take(record.request_id, "api", "worker-2") is None
    assert store.get(record.request_id).owner == "worker-1"  # type: ignore[union-attr]
    done = new_record("66666666-6666-4666-8666-000000000001", owner="api")
    store.create(done, "{}")
    final = replace(done, status=EmailStatus.SENT, pending=())
    store.save(final)
    assert store.take(done.request_id, "api", "worker") is None, "final: nothing to send"
    assert store.get(done.request_id) == final
    unknown = "66666666-6666-4666-8666-000000000002"
    assert store.take(unknown, "api", "worker") is None
    assert store.get(unknown) is None and store.payload(unknown) is None, "nothing created"


def test_a_taker_that_owns_the_request_already_gets_it_again(store: StatusStore) -> None:
    # redis-py retries a call whose reply timed out: the first run may have moved the owner,
    # and the retry must not find the request gone (it would be skipped under a live lease).
    record = new_record(owner="api")
    store.create(record, "{}")
    first = store.take(record.request_id, "api", "worker-1")
    again = store.take(record.request_id, "api", "worker-1")
    assert first is not None and again == first
    assert store.take(record.request_id, "api", "worker-2") is None


def assert_each_taken_once(first: StatusStore, second: StatusStore, ids: list[str]) -> None:
    """Two takers race the same hand-over (from "api") of each of `ids`, both starting each id
    together: every id is won exactly once, and the store names its winner."""
    start = threading.Barrier(2)
    wins: dict[str, list[str]] = {"w1": [], "w2": []}
    named: list[str] = []  # the owner each winner's returned record names

    def take_all(store: StatusStore, owner: str) -> None:
        for request_id in ids:
            start.wait(timeout=30)
            taken = store.take(request_id, "api", owner)
            if taken is not None:
                wins[owner].append(request_id)
                named.append(f"{owner}={taken[0].owner}")

    threads = [
        threading.Thread(target=take_all, args=(first, "w1")),
        threading.Thread(target=take_all, args=(second, "w2")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(wins["w1"] + wins["w2"]) == sorted(ids), "every id won exactly once"
    assert set(named) <= {"w1=w1", "w2=w2"}, named
    for owner, won in wins.items():
        assert all(first.get(i).owner == owner for i in won)  # type: ignore[union-attr]


def test_of_two_takers_with_one_hand_over_one_wins(store: StatusStore) -> None:
    ids = [f"66666666-6666-4666-8666-1{i:011d}" for i in range(50)]
    store.create_many([(new_record(request_id, owner="api"), "{}") for request_id in ids])
    assert_each_taken_once(store, store, ids)


def test_of_two_processes_taking_one_hand_over_one_wins(durable_pair) -> None:
    first, second = durable_pair
    ids = [f"66666666-6666-4666-8666-2{i:011d}" for i in range(50)]
    first.create_many([(new_record(request_id, owner="api"), "{}") for request_id in ids])
    assert_each_taken_once(first, second, ids)


def test_take_does_not_wait_for_a_live_lease_and_the_taker_s_lease_covers_it(
    durable_pair,
) -> None:
    first, second = durable_pair
    first.heartbeat("api", 30)
    record = new_record(owner="api")
    first.create(record, "{}")
    assert second.claim(record.request_id, "recovery") is None, "the lease protects it from claim"
    second.heartbeat("worker", 30)
    taken = second.take(record.request_id, "api", "worker")
    assert taken is not None and taken[0].owner == "worker"
    first.heartbeat("api", 0)  # the API process goes away: not the worker's request
    assert first.orphans(10) == [], "the taker's lease covers it"
    assert first.claim(record.request_id, "recovery") is None
    second.heartbeat("worker", 0)
    assert first.orphans(10) == [record.request_id], "the new owner's lease is what counts"


def test_take_from_an_owner_whose_lease_ran_out(durable_pair) -> None:
    first, second = durable_pair
    first.heartbeat("api", 0.2)
    record = new_record(owner="api")
    first.create(record, "{}")
    wait_for(lambda: second.orphans(10) == [record.request_id], timeout=10)
    second.heartbeat("worker", 30)
    taken = second.take(record.request_id, "api", "worker")
    assert taken == (replace(record, owner="worker"), "{}")
    assert first.orphans(10) == [], "no orphan while the new owner heartbeats"
    assert first.claim(record.request_id, "recovery") is None


@pytest.mark.redis
def test_redis_take_while_the_server_is_down_is_a_store_error(tmp_path) -> None:
    from mailservice.testing.redis_server import RedisServer

    server = RedisServer(tmp_path).start()
    store = store_from_url(server.url, ttl=60)
    try:
        record = new_record(owner="api")
        store.create(record, "{}")
        server.stop()
        with pytest.raises(StoreError):
            store.take(record.request_id, "api", "worker")
    finally:
        store.close()
        server.stop()


def test_sqlite_store_expires_final_records(tmp_path) -> None:
    from mailservice.stores.sqlite_store import SqliteStatusStore

    clock = FakeClock()
    store = SqliteStatusStore(str(tmp_path / "s.db"), ttl=60, clock=clock)
    record = new_record()
    store.create(record, "{}")
    store.save(replace(record, status=EmailStatus.SENT, pending=()))
    clock.now += 61
    assert store.get(record.request_id) is None
    store.purge_expired()
    assert store.payload(record.request_id) is None
    store.close()


def test_memory_store_keeps_at_most_max_finished_statuses() -> None:
    store = store_from_url("memory://?max=3", ttl=3600)
    ids = [f"77777777-7777-4777-8777-{i:012d}" for i in range(6)]
    for request_id in ids:
        record = new_record(request_id)
        store.create(record, "{}")
        store.save(replace(record, status=EmailStatus.SENT, pending=()))
    store.create(new_record("77777777-7777-4777-8777-999999999999"), "{}")  # unfinished
    assert [store.get(i) is not None for i in ids] == [False, False, False, True, True, True]
    assert store.get("77777777-7777-4777-8777-999999999999") is not None


def saved_final_then_webhook_delivered(store: StatusStore, request_id: str) -> None:
    """As a request with a webhook is saved: final, then final again with its webhook's outcome."""
    record = replace(new_record(request_id), webhook=WebhookState.PENDING)
    store.create(record, "{}")
    final = replace(record, status=EmailStatus.SENT, pending=())
    store.save(final)
    store.save(replace(final, webhook=WebhookState.DELIVERED))


def test_memory_store_keeps_max_statuses_when_webhook_outcomes_are_saved_too() -> None:
    store = store_from_url("memory://?max=3", ttl=3600)
    ids = [f"77777777-7777-4777-8777-{i:012d}" for i in range(6)]
    for request_id in ids:
        saved_final_then_webhook_delivered(store, request_id)
    assert [store.get(i) is not None for i in ids] == [False, False, False, True, True, True]
    assert store.get(ids[-1]).webhook is WebhookState.DELIVERED  # type: ignore[union-attr]


def test_memory_store_counts_a_status_saved_again_as_its_newest() -> None:
    store = store_from_url("memory://?max=3", ttl=3600)
    a, b, c, d = (new_record(f"77777777-7777-4777-8777-{i:012d}") for i in range(4))
    for record in (a, b, c):
        store.create(record, "{}")
        store.save(replace(record, status=EmailStatus.SENT, pending=()))
    store.save(replace(a, status=EmailStatus.SENT, pending=(), webhook=WebhookState.FAILED))
    store.create(d, "{}")
    store.save(replace(d, status=EmailStatus.SENT, pending=()))
    kept = [store.get(r.request_id) is not None for r in (a, b, c, d)]
    assert kept == [True, False, True, True], "the oldest save goes first, one status only"


def test_memory_store_expires_a_status_saved_again_once_ttl_after_its_last_save() -> None:
    clock = FakeClock()
    store = MemoryStatusStore(ttl=60, clock=clock)
    request_id = "33333333-3333-4333-8333-000000000003"
    record = replace(new_record(request_id), webhook=WebhookState.PENDING)
    store.create(record, "{}")
    final = replace(record, status=EmailStatus.SENT, pending=())
    store.save(final)
    clock.now += 10
    store.save(replace(final, webhook=WebhookState.DELIVERED))
    clock.now += 55  # 65 s after the first final save: its entry may not take the status
    assert store.get(request_id) is not None
    clock.now += 6
    assert store.get(request_id) is None, "expired ttl after the last save"


def test_memory_store_max_must_be_a_positive_number() -> None:
    with pytest.raises(ConfigError, match="max"):
        store_from_url("memory://?max=lots", ttl=60)
    with pytest.raises(ConfigError, match="max"):
        store_from_url("memory://?max=0", ttl=60)


# -- create_many: a batch in one round trip ----------------------------------------------------


def batch_records(count: int, owner: str = "p1") -> list[StatusRecord]:
    return [new_record(f"88888888-8888-4888-8888-{i:012d}", owner) for i in range(count)]


def test_create_many_records_every_item_with_its_payload(store: StatusStore) -> None:
    records = [
        replace(record, metadata={"n": str(i)}, tags=(f"t{i}",))
        for i, record in enumerate(batch_records(3))
    ]
    assert store.create_many([(r, f'{{"n": {i}}}') for i, r in enumerate(records)]) is None
    for i, record in enumerate(records):
        assert store.get(record.request_id) == record
        assert store.payload(record.request_id) == f'{{"n": {i}}}'
    final = replace(records[1], status=EmailStatus.SENT, pending=())
    assert store.save(final) is True, "a batch's record is saved like any other"
    assert store.get(final.request_id) == final and store.payload(final.request_id) is None


def test_create_many_records_are_unfinished_work_a_durable_store_hands_over(
    durable_pair,
) -> None:
    first, second = durable_pair
    records = batch_records(3, owner="dead-process")
    first.create_many([(record, "{}") for record in records])
    assert sorted(second.orphans(10)) == sorted(r.request_id for r in records)
    assert second.claim(records[0].request_id, "heir") is not None


def test_create_many_under_a_used_idempotency_key_creates_nothing(store: StatusStore) -> None:
    first, second = batch_records(4)[:2], batch_records(4)[2:]
    claim = IdempotencyClaim.of_batch(
        "scope-b", "fp-1", [first[0].request_id, None, first[1].request_id]
    )
    assert store.create_many([(r, "{}") for r in first], claim) is None
    again = IdempotencyClaim.of_batch("scope-b", "fp-2", [r.request_id for r in second])
    earlier = store.create_many([(r, "{}") for r in second], again)
    assert earlier == claim
    assert earlier.places == (first[0].request_id, None, first[1].request_id)
    assert all(store.get(r.request_id) is None for r in second), "nothing of the repeat"
    single = new_record("88888888-8888-4888-8888-999999999999")
    assert store.create(single, "{}", IdempotencyClaim("scope-b", "fp-3", "x")) == claim


def test_a_batch_and_a_single_request_share_idempotency_keys(store: StatusStore) -> None:
    single = new_record()
    claim = IdempotencyClaim("scope-s", "fp-single", single.request_id)
    assert store.create(single, "{}", claim) is None
    batch = batch_records(2)
    assert (
        store.create_many(
            [(r, "{}") for r in batch],
            IdempotencyClaim.of_batch("scope-s", "fp-batch", [r.request_id for r in batch]),
        )
        == claim
    )
    assert claim.places == (single.request_id,)


def test_two_racing_batches_with_one_idempotency_key_create_one_batch(store: StatusStore) -> None:
    batches = [batch_records(40)[:20], batch_records(40)[20:]]
    results: list[IdempotencyClaim | None] = [None, None]
    start = threading.Barrier(2)

    def create(n: int) -> None:
        claim = IdempotencyClaim.of_batch("race", f"fp-{n}", [r.request_id for r in batches[n]])
        start.wait()
        results[n] = store.create_many([(r, "{}") for r in batches[n]], claim)

    threads = [threading.Thread(target=create, args=(n,)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winner = 0 if results[0] is None else 1
    loser = 1 - winner
    assert results[winner] is None and results[loser] is not None
    assert results[loser].fingerprint == f"fp-{winner}"
    assert all(store.get(r.request_id) is not None for r in batches[winner])
    assert all(store.get(r.request_id) is None for r in batches[loser]), "all or nothing"


def test_create_many_of_100_is_one_sqlite_transaction(tmp_path) -> None:
    store = store_from_url(f"sqlite:///{tmp_path / 's.db'}", ttl=60)
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)  # type: ignore[attr-defined]
    claim = IdempotencyClaim.of_batch("s", "f", [r.request_id for r in batch_records(100)])
    store.create_many([(r, "{}") for r in batch_records(100)], claim)
    store._db.set_trace_callback(None)  # type: ignore[attr-defined]
    assert [s for s in statements if s.split()[0] in ("BEGIN", "COMMIT", "ROLLBACK")] == [
        "BEGIN IMMEDIATE",
        "COMMIT",
    ]
    # Distinct texts (bound values expanded): SQLite traces a statement again for each trigger
    # it fires (the counters of schema version 4).
    assert len({s for s in statements if s.startswith("INSERT INTO requests")}) == 100
    assert all(store.get(r.request_id) is not None for r in batch_records(100))
    store.close()


@pytest.mark.redis
def test_create_many_of_100_is_one_redis_round_trip(redis_server, monkeypatch) -> None:
    """Round trips counted at the client, as every command or pipeline sent is one; and on
    the server, one script call did every write."""
    import redis

    store = store_from_url(redis_server.url, ttl=60)
    store.create_many([(new_record(), "{}")])  # loads the script (NOSCRIPT the first time)
    sent: list[bytes] = []
    real_send = redis.connection.Connection.send_packed_command

    def counting_send(connection, command, check_health: bool = True) -> None:
        sent.append(command)
        real_send(connection, command, check_health)

    server = redis.Redis.from_url(redis_server.url)
    before = server.info("commandstats")
    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counting_send)
    records = batch_records(100)
    claim = IdempotencyClaim.of_batch("s", "f", [r.request_id for r in records])
    assert store.create_many([(r, "{}") for r in records], claim) is None
    monkeypatch.undo()
    after = server.info("commandstats")
    assert len(sent) == 1, "one round trip"

    def calls(name: str) -> int:
        return after.get(f"cmdstat_{name}", {}).get("calls", 0) - before.get(
            f"cmdstat_{name}", {}
        ).get("calls", 0)

    assert calls("evalsha") == 1 and calls("hset") == 100 and calls("sadd") == 1
    assert all(store.get(r.request_id) is not None for r in records)
    server.close()
    store.close()


# -- pending webhooks (API.md section 4: delivered after a restart or by another process) -----


def final_with_webhook(
    request_id: str = "88888888-8888-4888-8888-000000000001",
    owner: str = "dead",
    webhook: WebhookState | None = WebhookState.PENDING,
) -> tuple[StatusRecord, StatusRecord]:
    """A record as accepted (webhook pending) and as finished, webhook still `webhook`."""
    record = replace(
        new_record(request_id, owner=owner),
        callback_url="https://hooks.example.com/mail",
        webhook=WebhookState.PENDING,
    )
    return record, replace(record, status=EmailStatus.SENT, attempts=1, pending=(), webhook=webhook)


def test_memory_store_has_no_webhook_orphans(store: StatusStore) -> None:
    record, final = final_with_webhook()
    store.create(record, "{}")
    store.save(final)
    if store.durable:
        assert store.webhook_orphans(10, "p2") == [final.request_id]
    else:  # nothing outlives the process: no other process could take it
        assert store.webhook_orphans(10, "p2") == []
        assert store.claim_webhook(final.request_id, "p2") is None


def test_pending_webhook_of_a_dead_owner_is_claimed_once(durable_pair) -> None:
    first, second = durable_pair
    record, final = final_with_webhook()
    first.create(record, "{}")
    assert second.webhook_orphans(10, "p2") == [], "an unfinished request is not a webhook orphan"
    assert second.claim_webhook(record.request_id, "p2") is None
    first.save(final)
    assert second.webhook_orphans(10, "p2") == [final.request_id]
    second.heartbeat("p2", 30)
    claimed = second.claim_webhook(final.request_id, "p2")
    assert claimed == replace(final, owner="p2")
    assert first.webhook_orphans(10, "p3") == [], "p2's live lease covers it now"
    assert first.claim_webhook(final.request_id, "p3") is None
    assert first.save(replace(final, webhook=WebhookState.DELIVERED)) is False, "taken over"
    assert second.save(replace(claimed, webhook=WebhookState.DELIVERED)) is True
    got = first.get(final.request_id)
    assert got is not None and got.webhook is WebhookState.DELIVERED
    second.heartbeat("p2", 0)
    assert first.webhook_orphans(10, "p3") == [], "a delivered webhook is no orphan"
    assert first.claim_webhook(final.request_id, "p3") is None


def test_a_live_lease_keeps_a_pending_webhook_but_its_owner_finds_it(durable_pair) -> None:
    first, second = durable_pair
    first.heartbeat("p1", 30)
    record, final = final_with_webhook(owner="p1")
    first.create(record, "{}")
    first.save(final)
    assert second.webhook_orphans(10, "p2") == []
    assert second.claim_webhook(final.request_id, "p2") is None
    # Its owner finds it too: what it held no longer in memory (a full queue) is taken up.
    assert first.webhook_orphans(10, "p1") == [final.request_id]
    assert first.claim_webhook(final.request_id, "p1") == final
    first.heartbeat("p1", 0)  # given up at shutdown
    assert second.webhook_orphans(10, "p2") == [final.request_id]


def test_only_final_pending_webhooks_are_orphans(durable_pair) -> None:
    first, second = durable_pair
    ids = [f"99999999-9999-4999-8999-{i:012d}" for i in range(4)]
    for request_id, webhook in zip(
        ids, [None, WebhookState.DELIVERED, WebhookState.FAILED, WebhookState.PENDING], strict=True
    ):
        record, final = final_with_webhook(request_id, webhook=webhook)
        first.create(replace(record, webhook=None) if webhook is None else record, "{}")
        first.save(final)
    assert second.webhook_orphans(10, "p2") == [ids[3]]
    assert second.webhook_orphans(0, "p2") == []
    for request_id in ids[:3]:
        assert second.claim_webhook(request_id, "p2") is None


def test_only_one_of_two_webhook_claimants_wins(durable_pair) -> None:
    first, second = durable_pair
    ids = [f"aaaaaaaa-aaaa-4aaa-8aaa-{i:012d}" for i in range(40)]
    for request_id in ids:
        record, final = final_with_webhook(request_id)
        first.create(record, "{}")
        first.save(final)
    assert_each_claimed_once(first, second, ids, "claim_webhook")


def test_sqlite_expired_pending_webhook_is_no_orphan(tmp_path) -> None:
    from mailservice.stores.sqlite_store import SqliteStatusStore

    clock = FakeClock()
    store = SqliteStatusStore(str(tmp_path / "s.db"), ttl=60, clock=clock)
    record, final = final_with_webhook()
    store.create(record, "{}")
    store.save(final)
    assert store.webhook_orphans(10, "p2") == [final.request_id]
    clock.now += 61
    assert store.webhook_orphans(10, "p2") == []
    assert store.claim_webhook(final.request_id, "p2") is None
    store.close()


def test_sqlite_finds_pending_webhooks_through_their_index(tmp_path) -> None:
    from mailservice.stores.sqlite_store import WEBHOOK_ORPHANS, SqliteStatusStore

    store = SqliteStatusStore(str(tmp_path / "s.db"), ttl=60)
    params = {"now": 0, "owner": "a", "limit": 10, "after_at": "", "after_id": ""}
    plan = store._db.execute(f"EXPLAIN QUERY PLAN {WEBHOOK_ORPHANS}", params).fetchall()
    store.close()
    assert "USING INDEX requests_webhook_pending" in str(plan), plan


def test_webhook_orphans_go_on_where_the_last_call_stopped(durable_pair) -> None:
    # The caller skips what it holds itself; were every call to answer the same first ones,
    # those would hide the rest for good.
    first, second = durable_pair
    ids = [f"bbbbbbbb-bbbb-4bbb-8bbb-{i:012d}" for i in range(250)]
    finals = [final_with_webhook(request_id) for request_id in ids]
    first.create_many([(record, "{}") for record, _ in finals])
    for _, final in finals:
        first.save(final)
    seen: list[str] = []
    for _ in range(12):
        found = second.webhook_orphans(40, "p2")
        assert len(found) <= 40
        seen += found
    assert set(seen) == set(ids), f"{len(set(ids) - set(seen))} never found"


@pytest.mark.redis
def test_one_redis_webhook_orphans_call_looks_at_a_bounded_part_of_the_set(redis_server) -> None:
    from mailservice.stores.redis_store import WEBHOOKS

    store = store_from_url(redis_server.url, ttl=60)
    try:
        # Ids whose record expired: each call that looks at one removes it from the set.
        store.client.sadd(WEBHOOKS, *(f"gone-{i}" for i in range(3000)))
        assert store.webhook_orphans(10, "p2") == []
        assert 0 < store.client.scard(WEBHOOKS) < 3000, "one call looked at a part, not all"
        for _ in range(5):  # later calls go on through the rest
            assert store.webhook_orphans(10, "p2") == []
        assert store.client.scard(WEBHOOKS) == 0
    finally:
        store.close()


def test_sqlite_reads_between_refused_writes_do_not_end_the_outage(tmp_path, caplog) -> None:
    from mailservice.stores.sqlite_store import SqliteStatusStore

    store = SqliteStatusStore(str(tmp_path / "s.db"), ttl=60)
    record = new_record()
    store.create(record, "{}")
    store._db.execute("PRAGMA query_only = 1")  # writes refused, reads go on: as on a full disk
    for attempt in (1, 2):
        with pytest.raises(StoreError):
            store.save(replace(record, attempts=attempt))
        assert store.get(record.request_id) == record, "reads still work"
    store._db.execute("PRAGMA query_only = 0")
    assert store.save(replace(record, attempts=3))
    store.close()
    logged = [r.getMessage() for r in caplog.records if r.name == "mailservice.stores.sqlite_store"]
    assert len(logged) == 2, logged  # once when it starts, once when it ends
    assert "unreachable" in logged[0] and "reachable again" in logged[1]


# -- what the dashboard reads: history, the recent list, counts, sends per minute -------------

T0 = datetime(2026, 12, 1, 12, 0, 30, tzinfo=UTC)


def made_at(index: int, at: datetime, **changes) -> StatusRecord:
    """A queued record created at `at`, its id ordered by `index`."""
    return replace(
        new_record(f"cccccccc-cccc-4ccc-8ccc-{index:012d}"), created_at=at, updated_at=at, **changes
    )


def ids_of(page: RecentPage) -> list[str]:
    return [record.request_id for record in page.records]


def test_history_reads_back_equal_and_a_record_without_one_reads_empty(store: StatusStore) -> None:
    record = new_record().noted()
    store.create(record, "{}")
    sending = replace(record, status=EmailStatus.SENDING, attempts=1).noted()
    retrying = replace(sending, status=EmailStatus.RETRYING, error="451 4.7.0 später").noted()
    store.save(retrying)
    got = store.get(record.request_id)
    assert got == retrying and [e.status for e in got.history] == ["queued", "sending", "retrying"]
    assert got.history[-1].error == "451 4.7.0 später"
    plain = new_record("cccccccc-cccc-4ccc-8ccc-999999999999")
    store.create(plain, "{}")
    assert store.get(plain.request_id).history == ()  # type: ignore[union-attr]


def test_recent_pages_go_newest_first_without_gaps_or_repeats(store: StatusStore) -> None:
    # Three records share each creation time: a page may end between two of them.
    records = [made_at(i, T0 + timedelta(microseconds=i // 3)) for i in range(23)]
    store.create_many([(record, "{}") for record in records[:11]])
    for record in records[11:]:
        store.create(record, "{}")
    expected = [r.request_id for r in sorted(records, key=sort_key, reverse=True)]
    seen: list[str] = []
    page = store.recent(5)
    while True:
        assert 1 <= len(page.records) <= 5
        seen += ids_of(page)
        if page.before is None:
            break
        page = store.recent(5, before=page.before)
    assert seen == expected
    assert ids_of(store.recent(100)) == expected and store.recent(100).before is None
    assert store.recent(23).before is None, "no next page when nothing is left"


def test_recent_search_matches_a_whole_recipient_in_any_case_and_a_tag_exactly(
    store: StatusStore,
) -> None:
    a = made_at(1, T0, recipients=("Ada@Example.com", "ops@example.com"), tags=("Invoice",))
    b = made_at(2, T0 + timedelta(seconds=1), recipients=("bada@example.com",), tags=("invoice",))
    c = made_at(3, T0 + timedelta(seconds=2), recipients=("ada@example.com",), tags=("eu", "x-1"))
    for record in (a, b, c):
        store.create(record, "{}")

    def found(**search: str) -> list[str]:
        return ids_of(store.recent(10, search=Search(**search)))

    assert found(recipient="ada@example.COM") == [c.request_id, a.request_id]
    assert found(recipient="ops@example.com") == [a.request_id]
    assert found(recipient="da@example.com") == [], "a part of an address is not a match"
    assert found(tag="invoice") == [b.request_id], "tags are compared as given"
    assert found(tag="x-1") == [c.request_id]
    assert found(tag="x") == []
    assert found(recipient="ada@example.com", tag="Invoice") == [a.request_id]
    first = store.recent(1, search=Search(recipient="ADA@example.com"))
    assert ids_of(first) == [c.request_id] and first.before is not None
    rest = store.recent(1, before=first.before, search=Search(recipient="ADA@example.com"))
    assert ids_of(rest) == [a.request_id] and rest.before is None


@pytest.fixture
def small_window(monkeypatch: pytest.MonkeyPatch) -> int:
    """RECENT_WINDOW of 5 in every module that bounds by it."""
    from mailservice.stores import memory_store, redis_listing, redis_store, sqlite_listing

    for module in (memory_store, redis_listing, redis_store, sqlite_listing):
        monkeypatch.setattr(module, "RECENT_WINDOW", 5)
    return 5


def test_recent_lists_and_searches_only_the_newest_window(
    small_window: int, store: StatusStore
) -> None:
    records = [
        made_at(i, T0 + timedelta(seconds=i), tags=("old" if i == 0 else "new",)) for i in range(8)
    ]
    for record in records:
        store.create(record, "{}")
    newest = [r.request_id for r in reversed(records[-small_window:])]
    page = store.recent(100)
    assert ids_of(page) == newest and page.before is None
    assert ids_of(store.recent(100, search=Search(tag="old"))) == [], "outside the window"
    assert ids_of(store.recent(100, search=Search(tag="new"))) == newest
    assert store.get(records[0].request_id) is not None, "by id, a request is always found"


def test_recent_refuses_a_bad_page_size_or_cursor(store: StatusStore) -> None:
    for limit in (0, PAGE_MAX + 1):
        with pytest.raises(ValueError, match="page"):
            store.recent(limit)
    for cursor in ("", "x", "12_", "_abc", "1e5_abc", "١٢_abc", "12_" + "a" * 65):
        with pytest.raises(ValueError, match="cursor"):
            store.recent(10, before=cursor)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_recent_leaves_out_expired_statuses(kind: str, tmp_path) -> None:
    clock = FakeClock()
    store = clocked_store(kind, tmp_path, clock)
    done, open_ = made_at(1, T0), made_at(2, T0 + timedelta(seconds=1))
    store.create(done, "{}")
    store.create(open_, "{}")
    store.save(replace(done, status=EmailStatus.SENT, pending=()))
    assert ids_of(store.recent(10)) == [open_.request_id, done.request_id]
    clock.now += 61
    assert ids_of(store.recent(10)) == [open_.request_id]
    store.close()


def test_counts_follow_every_create_and_change_of_status(store: StatusStore) -> None:
    assert store.counts() == dict.fromkeys(EmailStatus, 0)
    records = [made_at(i, T0) for i in range(4)]
    store.create_many([(r, "{}") for r in records[:3]])
    store.create(records[3], "{}")
    sending = [replace(r, status=EmailStatus.SENDING, attempts=1) for r in records]
    for record in sending:
        store.save(record)
    store.save(replace(sending[0], status=EmailStatus.RETRYING))
    store.save(replace(sending[1], status=EmailStatus.SENT, pending=()))
    store.save(
        replace(sending[1], status=EmailStatus.SENT, pending=(), webhook=WebhookState.FAILED)
    )
    store.save(replace(sending[2], status=EmailStatus.FAILED, pending=(), error="550"))
    store.save(replace(sending[3], attempts=2))  # saved again, same status: no change
    assert store.counts() == {
        EmailStatus.SCHEDULED: 0,
        EmailStatus.QUEUED: 0,
        EmailStatus.SENDING: 1,
        EmailStatus.RETRYING: 1,
        EmailStatus.SENT: 1,
        EmailStatus.FAILED: 1,
        EmailStatus.EXPIRED: 0,
        EmailStatus.CANCELED: 0,
    }


def test_final_statuses_are_sent_failed_expired_and_canceled() -> None:
    assert {status for status in EmailStatus if status.final} == {
        EmailStatus.SENT,
        EmailStatus.FAILED,
        EmailStatus.EXPIRED,
        EmailStatus.CANCELED,
    }


def test_expired_and_canceled_are_counted_as_final_but_not_charted(store: StatusStore) -> None:
    now = T0 + timedelta(hours=1)
    records = [made_at(i, T0) for i in range(3)]
    store.create_many([(r, "{}") for r in records])
    ended = [
        replace(records[0], status=EmailStatus.EXPIRED, pending=(), updated_at=now),
        replace(records[1], status=EmailStatus.CANCELED, pending=(), updated_at=now),
        replace(records[2], status=EmailStatus.SENT, pending=(), updated_at=now),
    ]
    for final in ended:
        assert store.save(final) is True
        assert store.payload(final.request_id) is None, "a final record drops its payload"
        store.save(replace(final, webhook=WebhookState.DELIVERED))  # final again: not counted
    counts = store.counts()
    assert counts[EmailStatus.QUEUED] == 0, "each left queued once"
    assert counts[EmailStatus.EXPIRED] == counts[EmailStatus.CANCELED] == 1
    assert counts[EmailStatus.SENT] == 1
    found = store._finished_in([minute_of(now)])  # type: ignore[attr-defined]
    assert found == {
        (minute_of(now), EmailStatus.EXPIRED): 1,
        (minute_of(now), EmailStatus.CANCELED): 1,
        (minute_of(now), EmailStatus.SENT): 1,
    }
    assert store.sends_per_minute(now)[-1] == MinuteSends(minute_of(now), 1, 0), "the chart"


def test_a_refused_save_changes_no_count(durable_pair) -> None:
    first, second = durable_pair
    record = made_at(1, T0, owner="dead")
    first.create(record, "{}")
    assert second.claim(record.request_id, "heir") is not None
    assert first.save(replace(record, status=EmailStatus.SENT, pending=())) is False
    assert second.counts()[EmailStatus.QUEUED] == 1
    assert second.counts()[EmailStatus.SENT] == 0
    assert second.sends_per_minute(T0)[-1].sent == 0


def test_counts_add_up_under_threads(store: StatusStore) -> None:
    ids = [f"dddddddd-dddd-4ddd-8ddd-{i:012d}" for i in range(120)]

    def write(chunk: list[str]) -> None:
        for request_id in chunk:
            store.create(new_record(request_id), "{}")
            store.save(replace(new_record(request_id), status=EmailStatus.SENDING, attempts=1))
            store.save(replace(new_record(request_id), status=EmailStatus.SENT, pending=()))

    threads = [threading.Thread(target=write, args=(ids[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts = store.counts()
    assert counts[EmailStatus.SENT] == 120
    assert counts[EmailStatus.QUEUED] == counts[EmailStatus.SENDING] == 0
    assert sum(m.sent for m in store.sends_per_minute()) == 120


def test_sends_per_minute_counts_each_request_once_in_the_minute_it_ended(
    store: StatusStore,
) -> None:
    now = T0 + timedelta(hours=1)
    ended = [
        (now, EmailStatus.SENT),
        (now - timedelta(seconds=20), EmailStatus.SENT),  # the same minute (12:00 + 1 h)
        (now, EmailStatus.FAILED),
        (now - timedelta(minutes=5), EmailStatus.SENT),
        (now - timedelta(minutes=59), EmailStatus.FAILED),  # the chart's first minute
        (now - timedelta(minutes=60), EmailStatus.SENT),  # before the chart
    ]
    for index, (at, status) in enumerate(ended):
        record = made_at(index, T0)
        store.create(record, "{}")
        final = replace(record, status=status, pending=(), updated_at=at)
        store.save(final)
        store.save(replace(final, webhook=WebhookState.DELIVERED))  # final again: not counted
    chart = store.sends_per_minute(now)
    assert len(chart) == CHART_MINUTES
    assert chart[-1] == MinuteSends("2026-12-01T13:00", 2, 1)
    assert chart[-6] == MinuteSends("2026-12-01T12:55", 1, 0)
    assert chart[0] == MinuteSends("2026-12-01T12:01", 0, 1)
    assert sum(m.sent + m.failed for m in chart) == 5
    assert [m.minute for m in chart] == sorted(m.minute for m in chart)


def test_sqlite_recent_walks_its_index_and_never_sorts(tmp_path) -> None:
    from mailservice.stores.sqlite_listing import RECENT, RECENT_EDGE

    store = store_from_url(f"sqlite:///{tmp_path / 's.db'}", ttl=60)
    params = {
        "at": "~",
        "id": "",
        "edge_at": "",
        "edge_id": "",
        "now": 0,
        "recipient": "",
        "tag": "",
        "limit": 10,
    }
    for sql, values in ((RECENT, params), (RECENT_EDGE, {"skip": 5})):
        plan = str(store._db.execute(f"EXPLAIN QUERY PLAN {sql}", values).fetchall())  # type: ignore[attr-defined]
        assert "requests_created" in plan and "TEMP B-TREE" not in plan, plan
    store.close()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_per_minute_counters_older_than_two_hours_are_dropped(kind: str, tmp_path) -> None:
    # Redis's expire by themselves (MINUTES_KEPT after their last count).
    store = store_from_url(
        "memory://" if kind == "memory" else f"sqlite:///{tmp_path / 's.db'}", 60
    )
    later = T0 + timedelta(minutes=MINUTES_KEPT + 1)
    for index, at in enumerate((T0, later)):
        record = made_at(index, T0)
        store.create(record, "{}")
        store.save(replace(record, status=EmailStatus.SENT, pending=(), updated_at=at))
    kept = store._finished_in([minute_of(T0), minute_of(later)])  # type: ignore[attr-defined]
    assert kept == {(minute_of(later), EmailStatus.SENT): 1}
    store.close()


@pytest.mark.redis
def test_redis_recent_is_one_round_trip_trimmed_to_its_window(
    small_window: int, redis_server, monkeypatch
) -> None:
    import redis

    from mailservice.stores.redis_store import RECENT

    store = store_from_url(redis_server.url, ttl=60)
    records = [made_at(i, T0 + timedelta(seconds=i)) for i in range(8)]
    store.create_many([(r, "{}") for r in records[:4]])
    for record in records[4:]:
        store.create(record, "{}")
    assert store.client.zcard(RECENT) == small_window  # type: ignore[attr-defined]
    store.recent(3)  # loads the script
    sent: list[bytes] = []
    real_send = redis.connection.Connection.send_packed_command

    def counting_send(connection, command, check_health: bool = True) -> None:
        sent.append(command)
        real_send(connection, command, check_health)

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counting_send)
    page = store.recent(3, search=Search(recipient="a@example.com"))
    monkeypatch.undo()
    assert len(sent) == 1 and ids_of(page) == [r.request_id for r in records[7:4:-1]]
    store.close()


@pytest.mark.redis
def test_redis_recent_drops_ids_whose_status_expired(redis_server) -> None:
    from mailservice.stores.redis_store import KEY_PREFIX, RECENT

    store = store_from_url(redis_server.url, ttl=60)
    gone, kept = made_at(1, T0), made_at(2, T0 + timedelta(seconds=1))
    store.create(gone, "{}")
    store.create(kept, "{}")
    store.client.delete(KEY_PREFIX + gone.request_id)  # type: ignore[attr-defined]
    assert ids_of(store.recent(10)) == [kept.request_id]
    assert store.client.zrange(RECENT, 0, -1) == [kept.request_id]  # type: ignore[attr-defined]
    store.close()


@pytest.mark.redis
def test_redis_counts_never_go_below_zero_for_requests_older_than_the_counters(
    redis_server,
) -> None:
    from mailservice.stores.redis_store import COUNTS

    store = store_from_url(redis_server.url, ttl=60)
    record = made_at(1, T0)
    store.create(record, "{}")
    store.client.delete(COUNTS)  # type: ignore[attr-defined]  # as before the counters existed
    store.save(replace(record, status=EmailStatus.SENDING, attempts=1))
    assert store.counts()[EmailStatus.QUEUED] == 0
    assert store.counts()[EmailStatus.SENDING] == 1
    store.close()


def test_saving_a_record_the_store_does_not_have_writes_nothing(store: StatusStore) -> None:
    """An evicted or expired status saved again (a late webhook outcome): nothing comes back,
    nothing is counted twice."""
    record = replace(new_record(), status=EmailStatus.SENT, pending=())
    assert store.save(record) is False
    assert store.get(record.request_id) is None
    assert store.counts()[EmailStatus.SENT] == 0


# -- the content of failed requests, kept apart for a manual retry ------------------------------


def test_a_failed_request_keeps_its_content_apart_from_the_unfinished(store: StatusStore) -> None:
    record = replace(new_record(owner="api"), webhook=WebhookState.PENDING)
    store.create(record, '{"body": "kept"}')
    assert store.kept_payload(record.request_id) is None, "unfinished: nothing kept apart"
    failed = replace(record, status=EmailStatus.FAILED, pending=(), error="550 5.1.1 no")
    assert store.save(failed)
    assert store.kept_payload(record.request_id) == '{"body": "kept"}'
    assert store.payload(record.request_id) is None, "the payload says unfinished: gone"
    assert store.take(record.request_id, "api", "worker") is None
    assert store.orphans(10) == [] and store.claim(record.request_id, "heir") is None
    # Saved failed again with its webhook's outcome: what was kept stays.
    assert store.save(replace(failed, webhook=WebhookState.DELIVERED))
    assert store.kept_payload(record.request_id) == '{"body": "kept"}'
    assert store.get(record.request_id).webhook is WebhookState.DELIVERED  # type: ignore[union-attr]


@pytest.mark.parametrize("ending", [EmailStatus.SENT, EmailStatus.EXPIRED, EmailStatus.CANCELED])
def test_other_final_statuses_keep_no_content(store: StatusStore, ending: EmailStatus) -> None:
    record = new_record()
    store.create(record, '{"body": "b"}')
    assert store.save(replace(record, status=ending, pending=()))
    assert store.kept_payload(record.request_id) is None
    assert store.payload(record.request_id) is None
    assert store.kept_payload("00000000-0000-4000-8000-000000000000") is None, "unknown"


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis"])
def test_failed_content_ttl_0_deletes_the_content_at_once(
    kind: str, request: pytest.FixtureRequest
) -> None:
    store = open_store(kind, request, failed_content_ttl=0)
    try:
        record = new_record()
        store.create(record, '{"body": "b"}')
        assert store.save(replace(record, status=EmailStatus.FAILED, pending=(), error="550"))
        assert store.kept_payload(record.request_id) is None
        assert store.payload(record.request_id) is None
    finally:
        store.close()


def test_failed_content_ttl_may_not_be_negative() -> None:
    with pytest.raises(ValueError, match="failed_content_ttl"):
        store_from_url("memory://", ttl=60, failed_content_ttl=-1)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_kept_content_expires_after_failed_content_ttl(kind: str, tmp_path) -> None:
    clock = FakeClock()
    store = clocked_store(kind, tmp_path, clock)  # status 60 s, content 30 s
    record = new_record()
    store.create(record, '{"body": "b"}')
    store.save(replace(record, status=EmailStatus.FAILED, pending=(), error="550"))
    clock.now += 29
    assert store.kept_payload(record.request_id) == '{"body": "b"}'
    store.save(replace(record, status=EmailStatus.FAILED, pending=(), error="550", attempts=2))
    clock.now += 2  # 31 s after it failed: saved again since, its content is still gone
    assert store.kept_payload(record.request_id) is None
    assert store.get(record.request_id) is not None, "the status outlives its content"
    store.close()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_kept_content_never_outlives_its_status(kind: str, tmp_path) -> None:
    clock = FakeClock()
    store = clocked_store(kind, tmp_path, clock, ttl=60, failed_content_ttl=3600)
    record = new_record()
    store.create(record, '{"body": "b"}')
    store.save(replace(record, status=EmailStatus.FAILED, pending=(), error="550"))
    clock.now += 59
    assert store.kept_payload(record.request_id) == '{"body": "b"}'
    clock.now += 2
    assert store.get(record.request_id) is None
    assert store.kept_payload(record.request_id) is None
    store.close()


def kept_column(store: StatusStore, request_id: str) -> tuple[str | None, float | None]:
    return store._db.execute(  # type: ignore[attr-defined]
        "SELECT kept_payload, kept_until FROM requests WHERE request_id = ?", (request_id,)
    ).fetchone()


def test_sqlite_deletes_kept_content_on_purge_and_when_read_past_its_time(tmp_path) -> None:
    clock = FakeClock()
    store = clocked_store("sqlite", tmp_path, clock)
    first, second = new_record(), new_record("33333333-3333-4333-8333-000000000009")
    for record in (first, second):
        store.create(record, '{"body": "b"}')
        store.save(replace(record, status=EmailStatus.FAILED, pending=(), error="550"))
    assert kept_column(store, first.request_id) == ('{"body": "b"}', clock.now + 30)
    clock.now += 31
    store.purge_expired()
    assert kept_column(store, first.request_id) == (None, None)
    assert kept_column(store, second.request_id) == (None, None)
    third = new_record("33333333-3333-4333-8333-000000000010")
    store.create(third, '{"body": "b"}')
    store.save(replace(third, status=EmailStatus.FAILED, pending=(), error="550"))
    clock.now += 31
    assert kept_column(store, third.request_id)[0] == '{"body": "b"}'
    assert store.kept_payload(third.request_id) is None
    assert kept_column(store, third.request_id) == (None, None), "deleted once read past it"
    plan = str(
        store._db.execute(  # type: ignore[attr-defined]
            "EXPLAIN QUERY PLAN UPDATE requests SET kept_payload = NULL WHERE kept_until <= 1"
        ).fetchall()
    )
    assert "requests_kept" in plan, plan
    store.close()


@pytest.mark.redis
def test_redis_kept_content_is_a_key_of_its_own_that_expires(redis_server) -> None:
    from mailservice.stores.redis_store import KEPT_PREFIX, KEY_PREFIX

    store = store_from_url(redis_server.url, ttl=60, failed_content_ttl=1)
    try:
        record = new_record()
        store.create(record, '{"body": "b"}')
        store.save(replace(record, status=EmailStatus.FAILED, pending=(), error="550"))
        client = store.client  # type: ignore[attr-defined]
        assert not client.hexists(KEY_PREFIX + record.request_id, "payload")
        assert 0 < client.pttl(KEPT_PREFIX + record.request_id) <= 1000
        assert store.kept_payload(record.request_id) == '{"body": "b"}'
        wait_for(lambda: store.kept_payload(record.request_id) is None, timeout=5)
        assert store.get(record.request_id) is not None, "the status stays"
        sent = new_record("33333333-3333-4333-8333-000000000011")
        store.create(sent, "{}")
        store.save(replace(sent, status=EmailStatus.SENT, pending=()))
        assert not client.exists(KEPT_PREFIX + sent.request_id)
    finally:
        store.close()


# -- replace: compare and set, whoever owns the record (cancel, manual retry, the due scheduler)


def later(record: StatusRecord, **changes) -> StatusRecord:
    """`record` changed, a second later: each change of a record moves its updated_at."""
    return replace(record, updated_at=record.updated_at + timedelta(seconds=1), **changes)


def test_replace_writes_only_over_the_record_as_it_was_read(store: StatusStore) -> None:
    record = new_record(owner="worker")
    store.create(record, '{"body": "b"}')
    read = store.get(record.request_id)
    assert read == record
    canceled = later(read, status=EmailStatus.CANCELED, pending=(), owner="api")
    assert store.replace(canceled, read) is True, "whoever owns it"
    assert store.get(record.request_id) == canceled
    assert store.payload(record.request_id) is None
    assert store.kept_payload(record.request_id) is None
    counts = store.counts()
    assert counts[EmailStatus.QUEUED] == 0 and counts[EmailStatus.CANCELED] == 1
    assert store.replace(later(canceled, error="again"), read) is False, "changed since read"
    assert store.get(record.request_id) == canceled
    unknown = new_record("00000000-0000-4000-8000-000000000000")
    assert store.replace(later(unknown), unknown) is False
    assert store.get(unknown.request_id) is None, "nothing created"


def test_replace_fails_once_the_record_changed_in_its_status_or_time(store: StatusStore) -> None:
    record = new_record(owner="worker")
    store.create(record, "{}")
    saved = later(record, attempts=1)  # the same status, saved since: updated_at moved
    assert store.save(saved)
    assert store.replace(later(record, status=EmailStatus.CANCELED, pending=()), record) is False
    assert store.save(later(saved, status=EmailStatus.RETRYING))
    retrying = store.get(record.request_id)
    assert store.replace(later(saved, status=EmailStatus.CANCELED), saved) is False
    assert store.get(record.request_id) == retrying
    assert store.payload(record.request_id) == "{}"
    assert store.replace(later(retrying, status=EmailStatus.CANCELED, pending=()), retrying)


def test_replace_keeps_a_final_status_and_checks_its_arguments(store: StatusStore) -> None:
    record = new_record()
    store.create(record, '{"body": "b"}')
    sent = later(record, status=EmailStatus.SENT, pending=())
    assert store.save(sent)
    assert store.replace(later(sent, status=EmailStatus.CANCELED), sent) is False
    assert store.replace(later(sent, status=EmailStatus.QUEUED), sent) is False
    assert store.get(record.request_id) == sent
    outcome = replace(sent, webhook=WebhookState.DELIVERED)
    assert store.replace(outcome, sent) is True, "the same final status may be written again"
    other = new_record("00000000-0000-4000-8000-000000000001")
    with pytest.raises(ValueError, match="same record"):
        store.replace(other, sent)
    with pytest.raises(ValueError, match="unfinished"):
        store.replace(later(sent, status=EmailStatus.FAILED), sent, restore=True)


def race(*calls) -> list[bool]:
    """Run the calls in threads started together; what each returned, in order."""
    start = threading.Barrier(len(calls))
    results: list[bool | None] = [None] * len(calls)

    def run(index: int) -> None:
        start.wait(timeout=30)
        results[index] = calls[index]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(result is not None for result in results), "a call hung or raised"
    return results  # type: ignore[return-value]


def assert_one_replace_of_two_wins(first: StatusStore, second: StatusStore, prefix: str) -> None:
    ids = [f"{prefix}-eeee-4eee-8eee-{i:012d}" for i in range(30)]
    first.create_many([(new_record(request_id, owner="worker"), "{}") for request_id in ids])
    for request_id in ids:
        read = first.get(request_id)
        assert read is not None
        a = later(read, status=EmailStatus.CANCELED, pending=(), owner="api-a")
        b = later(read, status=EmailStatus.CANCELED, pending=(), owner="api-b", error="b")
        won = race(
            lambda a=a, r=read: first.replace(a, r), lambda b=b, r=read: second.replace(b, r)
        )
        assert sorted(won) == [False, True], request_id
        assert first.get(request_id) == (a if won[0] else b)
    assert first.counts()[EmailStatus.CANCELED] == len(ids), "each counted once"


def test_of_two_replaces_with_one_expected_one_wins(store: StatusStore) -> None:
    assert_one_replace_of_two_wins(store, store, "eeeeeee1")


def test_of_two_processes_replacing_one_record_one_wins(durable_pair) -> None:
    first, second = durable_pair
    assert_one_replace_of_two_wins(first, second, "eeeeeee2")


def assert_cancel_or_send_never_both(canceler: StatusStore, sender: StatusStore) -> None:
    """The owner saves `sending` while another process cancels what it read as queued:
    exactly one of the two writes, and the record says which."""
    ids = [f"ffffffff-ffff-4fff-8fff-{i:012d}" for i in range(40)]
    sender.create_many([(new_record(request_id, owner="worker"), "{}") for request_id in ids])
    outcomes = {"canceled": 0, "sending": 0}
    for request_id in ids:
        read = canceler.get(request_id)
        assert read is not None
        cancel = later(read, status=EmailStatus.CANCELED, pending=())
        sending = later(read, status=EmailStatus.SENDING, attempts=1)
        canceled, sent = race(
            lambda c=cancel, r=read: canceler.replace(c, r), lambda s=sending: sender.save(s)
        )
        assert canceled != sent, f"{request_id}: canceled={canceled} sending={sent}"
        stored = sender.get(request_id)
        assert stored == (cancel if canceled else sending)
        outcomes["canceled" if canceled else "sending"] += 1
        # The loser's next step fails too: a sender that lost never saves an outcome over it.
        if canceled:
            assert sender.save(later(sending, status=EmailStatus.SENT, pending=())) is False
            assert sender.payload(request_id) is None
    counts = sender.counts()
    assert counts[EmailStatus.CANCELED] == outcomes["canceled"]
    assert counts[EmailStatus.SENDING] == outcomes["sending"]
    assert counts[EmailStatus.QUEUED] == 0 and counts[EmailStatus.SENT] == 0


def test_cancel_raced_against_the_owner_s_save_of_sending_one_wins(store: StatusStore) -> None:
    assert_cancel_or_send_never_both(store, store)


def test_cancel_by_another_process_raced_against_the_owner_one_wins(durable_pair) -> None:
    first, second = durable_pair
    assert_cancel_or_send_never_both(first, second)


def failed_with_content(
    store: StatusStore, owner: str = "dead", request_id: str = new_record().request_id
) -> StatusRecord:
    """A request that failed with its webhook pending, its content kept."""
    record = replace(new_record(request_id, owner=owner), webhook=WebhookState.PENDING)
    store.create(record, '{"body": "kept"}')
    failed = later(record, status=EmailStatus.FAILED, attempts=3, pending=(), error="550 no")
    assert store.save(failed)
    return failed


def test_restore_brings_a_failed_request_back_with_its_content(store: StatusStore) -> None:
    failed = failed_with_content(store)
    assert store.replace(later(failed, status=EmailStatus.QUEUED), failed) is False, (
        "without restore a final status stays"
    )
    queued = later(failed, status=EmailStatus.QUEUED, attempts=0, error=None, owner="retrier")
    assert store.replace(queued, failed, restore=True) is True
    assert store.get(failed.request_id) == queued
    assert store.payload(failed.request_id) == '{"body": "kept"}'
    assert store.kept_payload(failed.request_id) is None, "moved, not copied"
    counts = store.counts()
    assert counts[EmailStatus.QUEUED] == 1 and counts[EmailStatus.FAILED] == 1, "ended once"
    assert store.webhook_orphans(10, "other") == [], "unfinished: no webhook to deliver yet"
    assert store.replace(later(queued), failed, restore=True) is False, "spent"
    # Unfinished again: it is sent, or fails again and keeps its content again.
    sending = later(queued, status=EmailStatus.SENDING, attempts=1)
    assert store.save(sending)
    again = later(sending, status=EmailStatus.FAILED, pending=(), error="550 still")
    assert store.save(again)
    assert store.kept_payload(failed.request_id) == '{"body": "kept"}'
    assert store.counts()[EmailStatus.FAILED] == 2


def test_restore_fails_when_no_content_is_kept(
    store: StatusStore, request: pytest.FixtureRequest
) -> None:
    record = new_record()
    store.create(record, "{}")
    sent = later(record, status=EmailStatus.SENT, pending=())
    store.save(sent)
    assert store.replace(later(sent, status=EmailStatus.QUEUED), sent, restore=True) is False
    queued = new_record("00000000-0000-4000-8000-000000000002")
    store.create(queued, "{}")
    assert store.replace(later(queued), queued, restore=True) is False, "nothing kept"
    assert store.get(queued.request_id) == queued


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_restore_fails_once_the_content_expired_and_a_restored_status_no_longer_expires(
    kind: str, tmp_path
) -> None:
    clock = FakeClock()
    store = clocked_store(kind, tmp_path, clock)  # status 60 s, content 30 s
    gone = failed_with_content(store)
    back = failed_with_content(store, request_id="00000000-0000-4000-8000-000000000003")
    clock.now += 20
    queued = later(back, status=EmailStatus.QUEUED, owner="retrier")
    assert store.replace(queued, back, restore=True)
    clock.now += 11
    assert store.replace(later(gone, status=EmailStatus.QUEUED), gone, restore=True) is False
    assert store.get(gone.request_id) == gone
    clock.now += 100  # long past the failed status's TTL
    store.purge_expired()
    assert store.get(back.request_id) == queued, "unfinished again: it expires no more"
    assert store.payload(back.request_id) == '{"body": "kept"}'
    assert store.get(gone.request_id) is None
    store.close()


def test_a_restored_request_is_unfinished_work_again(durable_pair) -> None:
    first, second = durable_pair
    failed = failed_with_content(first)  # its owner, "dead", holds no lease
    assert second.orphans(10) == [] and second.webhook_orphans(10, "p2") == [failed.request_id]
    queued = later(failed, status=EmailStatus.QUEUED, attempts=0, owner="retrier")
    assert second.replace(queued, failed, restore=True)
    assert second.webhook_orphans(10, "p2") == [], "not final: no webhook owed"
    assert first.orphans(10) == [failed.request_id], "the retrier holds no lease either"
    first.heartbeat("retrier", 30)
    assert first.orphans(10) == []
    assert second.take(failed.request_id, "retrier", "worker") == (
        replace(queued, owner="worker"),
        '{"body": "kept"}',
    )


# -- scheduled requests: an index by send_at, never an orphan ----------------------------------


def scheduled(index: int, send_at: datetime, owner: str = "api") -> StatusRecord:
    """A request accepted as scheduled for `send_at`, its id ordered by `index`."""
    return replace(
        new_record(f"abababab-abab-4bab-8bab-{index:012d}", owner=owner),
        status=EmailStatus.SCHEDULED,
        send_at=send_at,
    )


def test_a_scheduled_request_is_due_at_its_send_at_not_before(store: StatusStore) -> None:
    record = scheduled(1, T0)
    store.create(record, '{"body": "later"}')
    assert store.get(record.request_id) == record
    assert store.payload(record.request_id) == '{"body": "later"}', "unfinished: it has one"
    assert store.due(T0 - timedelta(microseconds=1), 10) == []
    assert store.due(T0 - timedelta(hours=1), 10) == []
    assert store.due(T0, 10) == [record.request_id], "due at its send_at"
    assert store.due(T0 + timedelta(days=40), 10) == [record.request_id]
    assert store.due(T0.astimezone(timezone(timedelta(hours=-5))), 10) == [record.request_id]
    assert store.due(T0, 0) == []
    assert store.counts()[EmailStatus.SCHEDULED] == 1
    assert store.counts()[EmailStatus.QUEUED] == 0


def test_due_lists_the_earliest_first_and_at_most_limit(store: StatusStore) -> None:
    # Created out of order, in one batch and one by one; two share a send_at (then by id).
    times = [T0 + timedelta(seconds=s) for s in (30, 10, 20, 10, 50, 40)]
    records = [scheduled(i, at) for i, at in enumerate(times)]
    queued = new_record("abababab-abab-4bab-8bab-999999999999")
    store.create_many([(r, "{}") for r in records[:3]] + [(queued, "{}")])
    for record in records[3:]:
        store.create(record, "{}")
    in_order = [r.request_id for r in sorted(records, key=lambda r: (r.send_at, r.request_id))]
    assert store.due(T0 + timedelta(minutes=5), 100) == in_order
    assert store.due(T0 + timedelta(minutes=5), 3) == in_order[:3]
    assert store.due(T0 + timedelta(seconds=25), 100) == in_order[:3], "only what is due"
    assert queued.request_id not in store.due(T0 + timedelta(days=1), 100), "queued: not due"
    assert store.counts()[EmailStatus.SCHEDULED] == 6


def test_a_scheduled_request_leaves_the_index_when_queued_or_canceled(store: StatusStore) -> None:
    due, canceled, saved = (scheduled(i, T0) for i in range(3))
    store.create_many([(due, "{}"), (canceled, "{}"), (saved, "{}")])
    taken = later(due, status=EmailStatus.QUEUED, owner="taker")
    assert store.replace(taken, due) is True
    assert store.replace(later(canceled, status=EmailStatus.CANCELED, pending=()), canceled)
    assert store.save(later(saved, status=EmailStatus.QUEUED)), "its owner may queue it too"
    assert store.due(T0 + timedelta(days=1), 10) == []
    assert store.replace(later(due, status=EmailStatus.QUEUED), due) is False, "taken once"
    assert store.get(due.request_id) == taken and store.payload(due.request_id) == "{}"
    counts = store.counts()
    assert counts[EmailStatus.SCHEDULED] == 0
    assert counts[EmailStatus.QUEUED] == 2 and counts[EmailStatus.CANCELED] == 1


def test_a_rescheduled_request_is_due_at_its_new_time(store: StatusStore) -> None:
    record = scheduled(1, T0)
    store.create(record, "{}")
    moved = later(record, send_at=T0 + timedelta(hours=1))
    assert store.replace(moved, record)
    assert store.due(T0 + timedelta(minutes=30), 10) == []
    assert store.due(T0 + timedelta(hours=1), 10) == [record.request_id]


def test_a_scheduled_request_needs_its_send_at(store: StatusStore) -> None:
    bad = replace(scheduled(1, T0), send_at=None)
    fine = scheduled(2, T0)
    with pytest.raises(ValueError, match="send_at"):
        store.create_many([(fine, "{}"), (bad, "{}")])
    assert store.get(fine.request_id) is None, "nothing of the batch"
    store.create(fine, "{}")
    with pytest.raises(ValueError, match="send_at"):
        store.save(replace(fine, send_at=None))
    with pytest.raises(ValueError, match="send_at"):
        store.replace(later(fine, send_at=None), fine)
    assert store.get(fine.request_id) == fine


def test_a_scheduled_request_is_never_an_orphan(durable_pair) -> None:
    first, second = durable_pair
    first.heartbeat("api", 30)
    record = scheduled(1, T0, owner="api")
    first.create(record, "{}")
    first.heartbeat("api", 0)  # its owner's lease is gone
    assert second.orphans(10) == [], "recovery would send it before its time"
    assert second.claim(record.request_id, "recovery") is None
    assert second.due(T0, 10) == [record.request_id], "the due scheduler finds it instead"
    taken = later(record, status=EmailStatus.QUEUED, owner="taker")
    assert second.replace(taken, record)
    second.heartbeat("taker", 30)
    assert first.orphans(10) == [], "its taker's lease covers it"
    second.heartbeat("taker", 0)
    assert first.orphans(10) == [record.request_id], "queued: an orphan like any other"
    claimed = first.claim(record.request_id, "heir")
    assert claimed == (replace(taken, owner="heir"), "{}")


def test_sqlite_due_walks_its_partial_index_and_never_sorts(tmp_path) -> None:
    from mailservice.stores.sqlite_store import DUE

    store = store_from_url(f"sqlite:///{tmp_path / 's.db'}", ttl=60)
    db = store._db  # type: ignore[attr-defined]
    plan = str(db.execute(f"EXPLAIN QUERY PLAN {DUE}", {"now": "~", "limit": 5}).fetchall())
    store.close()
    assert "requests_scheduled" in plan and "TEMP B-TREE" not in plan, plan
