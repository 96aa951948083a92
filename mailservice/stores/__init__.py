"""The status stores: `store_from_url()` picks a backend by URL scheme through `STORE_BACKENDS`.

    contract.py      the record, its statuses, the StatusStore interface
    codec.py         a record as text fields (Redis, SQLite)
    listing.py       what the dashboard reads: recent pages, searches, per-minute counts
    suppressions.py  each sender account's suppression list: its values and interface part
    memory_store.py  memory://   one process (memory_suppressions.py: its suppression lists)
    sqlite_store.py  sqlite:///  durable, one machine
    sqlite_schema.py             its file's schema version and migrations
    sqlite_listing.py            its reads for the dashboard
    sqlite_writes.py             its UPDATEs of save() and replace()
    sqlite_suppressions.py       its suppression lists
    redis_store.py   redis://    durable, several processes and hosts
    redis_scripts.py             its Lua scripts
    redis_listing.py             its reads for the dashboard
    redis_suppressions.py        its suppression lists

Backends import only the contract, the codec, the listing and suppression types and
`mailservice.errors` (and their own helper modules); this registry alone imports the backends
(Redis and SQLite on use). tests/test_layering.py checks both rules.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

from mailservice.errors import ConfigError
from mailservice.stores.contract import FAILED_CONTENT_TTL, StatusStore
from mailservice.stores.memory_store import MEMORY_MAX_FINISHED, MemoryStatusStore

# (url, ttl, failed_content_ttl) -> the store
StoreFactory = Callable[[str, int, int], StatusStore]


def _memory(url: str, ttl: int, failed_content_ttl: int) -> StatusStore:
    query = parse_qs(urlsplit(url).query)
    try:
        max_finished = int(query.get("max", [MEMORY_MAX_FINISHED])[0])
    except ValueError as exc:
        raise ConfigError(f"STATUS_STORE_URL {url!r}: max must be a number") from exc
    if max_finished < 1:
        raise ConfigError(f"STATUS_STORE_URL {url!r}: max must be positive")
    return MemoryStatusStore(ttl, max_finished=max_finished, failed_content_ttl=failed_content_ttl)


def _redis(url: str, ttl: int, failed_content_ttl: int) -> StatusStore:
    from mailservice.stores.redis_store import (
        RedisStatusStore,  # imported on use: redis is a backend detail
    )

    return RedisStatusStore.from_url(url, ttl, failed_content_ttl=failed_content_ttl)


def _sqlite(url: str, ttl: int, failed_content_ttl: int) -> StatusStore:
    from mailservice.stores.sqlite_store import SqliteStatusStore

    return SqliteStatusStore.from_url(url, ttl, failed_content_ttl=failed_content_ttl)


STORE_BACKENDS: dict[str, StoreFactory] = {
    "memory": _memory,
    "redis": _redis,
    "rediss": _redis,
    "sqlite": _sqlite,
}


def store_from_url(url: str, ttl: int, failed_content_ttl: int = FAILED_CONTENT_TTL) -> StatusStore:
    """The store a STATUS_STORE_URL names, keeping statuses `ttl` seconds and failed requests'
    content `failed_content_ttl` (0: deleted at once); ConfigError for an unknown scheme."""
    scheme = urlsplit(url).scheme.lower()
    factory = STORE_BACKENDS.get(scheme)
    if factory is None:
        known = ", ".join(f"{name}://" for name in STORE_BACKENDS)
        raise ConfigError(f"STATUS_STORE_URL scheme {scheme!r} is not supported (use {known})")
    return factory(url, ttl, failed_content_ttl)


def redis_client_of(store: StatusStore) -> object | None:
    """The Redis client of a Redis store (its server also keeps what every process of a
    deployment shares besides statuses: the sender gate's counts and pauses), else None."""
    from mailservice.stores.redis_store import RedisStatusStore

    return store.client if isinstance(store, RedisStatusStore) else None
