"""The Redis store beyond the contract: its keys, their expiry, its scripts and round trips,
on a real redis-server."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from mailservice.stores import store_from_url
from mailservice.stores.contract import EmailStatus, IdempotencyClaim, WebhookState
from tests.conftest import wait_for
from tests.test_status_store import T0, new_record, scheduled


@pytest.mark.redis
def test_redis_store_sets_ttl_only_when_final(redis_server: Any) -> None:
    import redis

    store = store_from_url(redis_server.url, ttl=120)
    record = new_record()
    store.create(record, "{}")
    client = redis.Redis.from_url(redis_server.url)
    key = f"mail:req:{record.request_id}"
    assert client.ttl(key) == -1, "unfinished: no expiry"
    store.save(replace(record, status=EmailStatus.SENT, pending=()))
    assert 0 < client.ttl(key) <= 120
    assert not client.hexists(key, "payload")
    client.close()
    store.close()


@pytest.mark.redis
def test_redis_store_expiry_really_removes_the_status(redis_server: Any) -> None:
    store = store_from_url(redis_server.url, ttl=1)
    record = new_record()
    store.create(record, "{}")
    store.save(replace(record, status=EmailStatus.SENT, pending=()))
    wait_for(lambda: store.get(record.request_id) is None, timeout=5)  # it expired
    store.close()


@pytest.mark.redis
def test_redis_key_names_are_those_of_existing_deployments(redis_server: Any) -> None:
    import redis

    store = store_from_url(redis_server.url, ttl=60)
    record = new_record(owner="p1")
    store.create(record, "{}", IdempotencyClaim("scope-1", "f", record.request_id))
    store.heartbeat("p1", 30)
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    assert set(client.keys("*")) == {
        f"mail:req:{record.request_id}",
        "mail:unfinished",
        "mail:owner:p1",
        "mail:idem:scope-1",
        "mail:recent",  # the dashboard's index and counts (issue 13)
        "mail:counts",
    }
    client.close()
    store.close()


@pytest.mark.redis
def test_redis_scripts_take_their_key_prefixes_from_the_constants(
    redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    from mailservice.stores import redis_store

    for name in (
        "KEY_PREFIX",
        "OWNER_PREFIX",
        "IDEMPOTENCY_PREFIX",
        "UNFINISHED",
        "RECENT",
        "COUNTS",
        "FINISHED_PREFIX",
        "KEPT_PREFIX",
        "SCHEDULED",
    ):
        monkeypatch.setattr(redis_store, name, "alt:" + getattr(redis_store, name))
    first, second = (store_from_url(redis_server.url, ttl=60) for _ in range(2))
    dead, alive = (
        new_record("88888888-8888-4888-8888-000000000001", owner="dead"),
        new_record("88888888-8888-4888-8888-000000000002", owner="alive"),
    )
    first.create(dead, "{}")
    first.create(alive, "{}")
    first.heartbeat("alive", 30)
    assert second.orphans(10) == [dead.request_id], "records and leases read under the prefixes"
    assert second.claim(alive.request_id, "thief") is None
    claimed = second.claim(dead.request_id, "heir")
    assert claimed is not None
    # A minute's counter and a failed request's kept content.
    second.save(replace(claimed[0], status=EmailStatus.FAILED, pending=(), error="550"))
    assert second.kept_payload(dead.request_id) == "{}"
    assert [r.request_id for r in second.recent(10).records] == [alive.request_id, dead.request_id]
    later = scheduled(1, T0)
    first.create(later, "{}")
    assert second.due(T0, 10) == [later.request_id]
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    assert all(key.startswith("alt:") for key in client.keys("*")), client.keys("*")
    client.close()
    first.close()
    second.close()


@pytest.mark.redis
def test_redis_store_makes_one_round_trip_per_call(
    redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Round trips counted at the client: a pipeline or a script is one."""
    import redis

    store = store_from_url(redis_server.url, ttl=60)
    sent: list[int] = []
    real_send = redis.connection.Connection.send_packed_command

    def counting_send(connection: Any, command: Any, check_health: bool = True) -> None:
        sent.append(1)
        real_send(connection, command, check_health)

    def trips(call: Any) -> int:
        call()  # the first call of a script may also load it (NOSCRIPT)
        sent.clear()
        call()
        return len(sent)

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", counting_send)
    ids = iter(f"99999999-9999-4999-8999-{i:012d}" for i in range(10))
    record = new_record(owner="dead")
    store.create(record, "{}")
    handed = new_record(next(ids), owner="api")
    store.create(handed, "{}")
    taken: list[object] = []
    counts = {
        "create": trips(lambda: store.create(new_record(next(ids)), "{}")),
        "create+idempotency": trips(
            lambda: store.create(new_record(next(ids)), "{}", IdempotencyClaim("s", "f", "r"))
        ),
        "save": trips(lambda: store.save(replace(record, attempts=1))),
        "get": trips(lambda: store.get(record.request_id)),
        "get_many": trips(lambda: store.get_many([record.request_id, handed.request_id])),
        "kept_payload": trips(lambda: store.kept_payload(record.request_id)),
        "heartbeat": trips(lambda: store.heartbeat("p1", 30)),
        "orphans": trips(lambda: store.orphans(10)),
        "due": trips(lambda: store.due(T0, 10)),
        "claim": trips(lambda: store.claim(record.request_id, "heir")),
        # Handed on to the same owner, so that both calls take it: the path that succeeds.
        "take": trips(lambda: taken.append(store.take(handed.request_id, "api", "api"))),
        # Refused the second time (changed since): the same one script either way.
        "replace": trips(lambda: store.replace(replace(record, attempts=7), record)),
        "replace+restore": trips(lambda: store.replace(record, record, restore=True)),
    }
    # claim is a script then a read of the record taken over: two, as before; take returns
    # the record from its script.
    assert counts == {name: 2 if name == "claim" else 1 for name in counts}
    assert len(taken) == 2 and all(taken), "both takes succeeded"
    assert trips(lambda: store.get_many([])) == 0
    store.close()


@pytest.mark.redis
def test_a_record_stored_before_metadata_existed_reads_with_none(redis_server: Any) -> None:
    import redis

    store = store_from_url(redis_server.url, ttl=60)
    record = replace(new_record(), metadata={"user_id": "7"})
    store.create(record, "{}")
    assert store.get(record.request_id).metadata == {"user_id": "7"}
    client = redis.Redis.from_url(redis_server.url)
    client.hdel(f"mail:req:{record.request_id}", "metadata")  # as an older release wrote it
    client.close()
    assert store.get(record.request_id).metadata == {}
    store.close()


@pytest.mark.redis
def test_redis_restore_makes_the_record_unfinished_again(redis_server: Any) -> None:
    from mailservice.stores.redis_store import KEPT_PREFIX, KEY_PREFIX, UNFINISHED, WEBHOOKS

    store = store_from_url(redis_server.url, ttl=120)
    client = store.client  # type: ignore[attr-defined]
    record = replace(new_record(), webhook=WebhookState.PENDING)
    store.create(record, '{"body": "b"}')
    failed = replace(record, status=EmailStatus.FAILED, pending=(), error="550")
    store.save(failed)
    key = KEY_PREFIX + record.request_id
    assert 0 < client.ttl(key) <= 120 and client.exists(KEPT_PREFIX + record.request_id)
    assert not client.sismember(UNFINISHED, record.request_id)
    assert client.sismember(WEBHOOKS, record.request_id)
    queued = replace(failed, status=EmailStatus.QUEUED, error=None, owner="retrier")
    assert store.replace(queued, failed, restore=True)
    assert client.ttl(key) == -1, "unfinished: no expiry"
    assert client.hget(key, "payload") == '{"body": "b"}'
    assert not client.exists(KEPT_PREFIX + record.request_id)
    assert client.sismember(UNFINISHED, record.request_id)
    assert not client.sismember(WEBHOOKS, record.request_id)
    store.close()


@pytest.mark.redis
def test_redis_scheduled_requests_live_in_their_own_sorted_set(redis_server: Any) -> None:
    from datetime import timedelta

    from mailservice.stores.redis_store import KEY_PREFIX, SCHEDULED, UNFINISHED

    store = store_from_url(redis_server.url, ttl=60)
    client = store.client  # type: ignore[attr-defined]
    first, second, gone = (scheduled(i, T0 + timedelta(seconds=i)) for i in range(3))
    store.create_many([(first, "{}"), (second, "{}"), (gone, "{}")])
    assert client.zrange(SCHEDULED, 0, -1, withscores=True) == [
        (r.request_id, r.send_at.timestamp())  # type: ignore[union-attr]
        for r in (first, second, gone)
    ]
    assert client.smembers(UNFINISHED) == set(), "recovery never sees them"
    client.delete(KEY_PREFIX + gone.request_id)  # as if it had gone some other way
    assert store.due(T0 + timedelta(minutes=1), 10) == [first.request_id, second.request_id]
    assert client.zcard(SCHEDULED) == 2, "an id without its record leaves the set"
    queued = replace(first, status=EmailStatus.QUEUED, owner="taker")
    assert store.replace(queued, first)
    assert client.smembers(UNFINISHED) == {first.request_id}
    assert client.zrange(SCHEDULED, 0, -1) == [second.request_id]
    canceled = replace(second, status=EmailStatus.CANCELED, pending=())
    assert store.replace(canceled, second)
    assert client.zcard(SCHEDULED) == 0
    assert client.smembers(UNFINISHED) == {first.request_id}
    store.close()
