"""The suppression list's store contract (stores/suppressions.py): one suite run on the memory
store, SQLite and a real redis-server, plus each backend's own bounds."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from mailservice.errors import StoreError
from mailservice.stores import store_from_url
from mailservice.stores.contract import StatusStore
from mailservice.stores.memory_suppressions import MemorySuppressions
from mailservice.stores.suppressions import (
    SUPPRESSION_PAGE_MAX,
    Suppression,
    cursor_of,
    normalized,
    parse_cursor,
)
from tests.conftest import wait_for
from tests.test_status_store import open_store

ACCOUNT = "sender@example.com"
OTHER = "other@example.org"
REPLY = "550 5.1.1 <gone@example.net>: Recipient address rejected: User unknown"


def later(days: float = 30) -> datetime:
    return datetime.now(UTC) + timedelta(days=days)


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


def test_a_suppressed_address_is_found_in_any_case_with_its_reply(store: StatusStore) -> None:
    entry = store.suppress(ACCOUNT, "Gone@Example.NET", REPLY, later())
    assert (entry.account, entry.address, entry.reason) == (ACCOUNT, "gone@example.net", REPLY)
    found = store.suppressed(ACCOUNT, ["GONE@example.net", "fine@example.net", "gone@EXAMPLE.net"])
    # Keyed by the addresses as given (the caller's recipients), each spelling found.
    assert found == {"GONE@example.net": REPLY, "gone@EXAMPLE.net": REPLY}
    assert store.suppressed(ACCOUNT.upper(), ["gone@example.net"]) == {"gone@example.net": REPLY}
    assert store.suppressed(ACCOUNT, []) == {}


def test_each_account_has_its_own_list(store: StatusStore) -> None:
    store.suppress(ACCOUNT, "gone@example.net", REPLY, later())
    assert store.suppressed(OTHER, ["gone@example.net"]) == {}
    assert [e.address for e in store.suppressions(OTHER, 10).entries] == []


def test_suppressing_again_renews_the_entry_with_its_new_reason(store: StatusStore) -> None:
    store.suppress(ACCOUNT, "gone@example.net", "550 5.1.1 first", later(1))
    store.suppress(ACCOUNT, "gone@example.net", "550 5.2.1 second", later(30))
    assert store.suppressed(ACCOUNT, ["gone@example.net"]) == {
        "gone@example.net": "550 5.2.1 second"
    }
    (entry,) = store.suppressions(ACCOUNT, 10).entries
    assert entry.reason == "550 5.2.1 second"
    assert abs((entry.until - later(30)).total_seconds()) < 60


def test_an_entry_is_not_answered_once_it_expired(store: StatusStore) -> None:
    store.suppress(ACCOUNT, "past@example.net", REPLY, datetime.now(UTC) - timedelta(seconds=1))
    assert store.suppressed(ACCOUNT, ["past@example.net"]) == {}
    assert store.suppressions(ACCOUNT, 10).entries == ()
    assert not store.unsuppress(ACCOUNT, "past@example.net")
    store.suppress(ACCOUNT, "soon@example.net", REPLY, datetime.now(UTC) + timedelta(seconds=1))
    assert store.suppressed(ACCOUNT, ["soon@example.net"]) == {"soon@example.net": REPLY}
    wait_for(lambda: store.suppressed(ACCOUNT, ["soon@example.net"]) == {}, timeout=5)
    assert store.suppressions(None, 10).entries == ()


def test_the_list_is_in_account_then_address_order_page_by_page(store: StatusStore) -> None:
    # "sender@example.com" is a prefix of "sender@example.company": each list stays its own.
    prefixed = "sender@example.company"
    for account, address in [
        (ACCOUNT, "c@example.net"),
        (prefixed, "a@example.net"),
        (ACCOUNT, "a@example.net"),
        (OTHER, "z@example.net"),
        (ACCOUNT, "b@example.net"),
    ]:
        store.suppress(account, address, REPLY, later())
    first = store.suppressions(ACCOUNT, 2)
    assert [e.address for e in first.entries] == ["a@example.net", "b@example.net"]
    assert first.after is not None
    second = store.suppressions(ACCOUNT, 2, first.after)
    assert [e.address for e in second.entries] == ["c@example.net"] and second.after is None
    assert [e.address for e in store.suppressions(prefixed, 10).entries] == ["a@example.net"]
    everyone = store.suppressions(None, SUPPRESSION_PAGE_MAX)
    assert [(e.account, e.address) for e in everyone.entries] == [
        (OTHER, "z@example.net"),
        (ACCOUNT, "a@example.net"),
        (ACCOUNT, "b@example.net"),
        (ACCOUNT, "c@example.net"),
        (prefixed, "a@example.net"),
    ]
    walked: list[Suppression] = []
    after = None
    while True:  # the whole list, one entry a page
        page = store.suppressions(None, 1, after)
        walked += page.entries
        if page.after is None:
            break
        after = page.after
    assert walked == list(everyone.entries)
    entry = everyone.entries[0]
    assert entry.created_at <= datetime.now(UTC) < entry.until
    assert set(entry.public()) == {"sender", "address", "reason", "created_at", "expires_at"}


def test_removing_an_entry_says_whether_it_was_there(store: StatusStore) -> None:
    store.suppress(ACCOUNT, "gone@example.net", REPLY, later())
    assert not store.unsuppress(OTHER, "gone@example.net")
    assert store.unsuppress(ACCOUNT, "GONE@example.net")
    assert store.suppressed(ACCOUNT, ["gone@example.net"]) == {}
    assert not store.unsuppress(ACCOUNT, "gone@example.net")
    assert store.suppressions(None, 10).entries == ()


def test_malformed_arguments_are_value_errors(store: StatusStore) -> None:
    for address in ("", "no-at-sign", "two words@example.net", "tab\t@example.net"):
        with pytest.raises(ValueError):
            store.suppress(ACCOUNT, address, REPLY, later())
    with pytest.raises(ValueError):
        store.suppress(ACCOUNT, "a@example.net", REPLY, datetime.now() + timedelta(days=1))
    assert store.suppressed(ACCOUNT, ["two words@example.net"]) == {}
    for limit in (0, SUPPRESSION_PAGE_MAX + 1):
        with pytest.raises(ValueError):
            store.suppressions(ACCOUNT, limit)
    for cursor in ("", "%%%", "bm8tc2VwYXJhdG9y", "x" * 2000):
        with pytest.raises(ValueError):
            store.suppressions(None, 10, cursor)
    with pytest.raises(ValueError, match="this sender"):
        store.suppressions(ACCOUNT, 10, cursor_of(OTHER, "a@example.net"))


def test_a_long_reply_is_kept_bounded_on_one_line(store: StatusStore) -> None:
    entry = store.suppress(ACCOUNT, "gone@example.net", "550 5.1.1 x\r\n" + "y" * 5000, later())
    assert len(entry.reason) == 500 and "\n" not in entry.reason
    assert store.suppressed(ACCOUNT, ["gone@example.net"])["gone@example.net"] == entry.reason


def test_the_list_is_shared_by_every_process_of_a_durable_store(durable_pair) -> None:
    first, second = durable_pair
    first.suppress(ACCOUNT, "gone@example.net", REPLY, later())
    assert second.suppressed(ACCOUNT, ["gone@example.net"]) == {"gone@example.net": REPLY}
    assert second.unsuppress(ACCOUNT, "gone@example.net")
    assert first.suppressed(ACCOUNT, ["gone@example.net"]) == {}


def test_a_cursor_names_an_entry_and_nothing_else() -> None:
    assert parse_cursor(cursor_of(ACCOUNT, "a@example.net")) == (ACCOUNT, "a@example.net")
    assert normalized(" Ünï@Example.NET ") == "ünï@example.net"


# -- each backend's own bounds ---------------------------------------------------------------


def test_memory_lists_keep_at_most_their_bound_the_soonest_to_expire_going_first() -> None:
    lists = MemorySuppressions(max_entries=2)
    now = datetime.now(UTC)
    for n, days in enumerate((3, 1, 2)):
        entry = Suppression(ACCOUNT, f"a{n}@example.net", REPLY, now, now + timedelta(days=days))
        lists.suppress(entry)
    page = lists.suppressions(None, 10, None)
    assert [e.address for e in page.entries] == ["a0@example.net", "a2@example.net"]


def test_sqlite_purge_deletes_expired_entries(tmp_path) -> None:
    path = tmp_path / "s.db"
    store = store_from_url(f"sqlite:///{path}", ttl=60)
    try:
        store.suppress(ACCOUNT, "past@example.net", REPLY, datetime.now(UTC) - timedelta(1))
        store.suppress(ACCOUNT, "kept@example.net", REPLY, later())
        store.purge_expired()
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT address FROM suppressions").fetchall()
        assert rows == [("kept@example.net",)]
    finally:
        store.close()


@pytest.mark.redis
def test_redis_entries_expire_by_themselves_and_leave_the_index(redis_server) -> None:
    import redis

    from mailservice.stores.redis_suppressions import INDEX

    store = store_from_url(redis_server.url, ttl=60)
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        store.suppress(ACCOUNT, "soon@example.net", REPLY, datetime.now(UTC) + timedelta(0, 1))
        store.suppress(ACCOUNT, "kept@example.net", REPLY, later())
        key = f"mail:supp:{ACCOUNT} soon@example.net"
        assert 0 < client.pttl(key) <= 1000, "Redis expires the entry at its until"
        wait_for(lambda: not client.exists(key), timeout=5)
        assert client.zcard(INDEX) == 2, "the index still names it until a listing looks"
        page = store.suppressions(ACCOUNT, 10)
        assert [e.address for e in page.entries] == ["kept@example.net"]
        assert client.zrange(INDEX, 0, -1) == [f"{ACCOUNT} kept@example.net"]
    finally:
        client.close()
        store.close()


@pytest.mark.redis
def test_redis_down_is_a_store_error(tmp_path) -> None:
    from mailservice.testing.redis_server import RedisServer

    server = RedisServer(tmp_path).start()
    store = store_from_url(server.url, ttl=60)
    try:
        store.suppress(ACCOUNT, "gone@example.net", REPLY, later())
        server.stop()
        with pytest.raises(StoreError):
            store.suppressed(ACCOUNT, ["gone@example.net"])
        with pytest.raises(StoreError):
            store.suppress(ACCOUNT, "more@example.net", REPLY, later())
    finally:
        store.close()
        server.stop()
