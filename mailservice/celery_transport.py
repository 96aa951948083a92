"""kombu's Redis transport, with one Redis client per channel instead of one per command.

kombu's Redis channel builds a new `redis.Redis` for every command it sends outside its BRPOP
loop (`Channel.conn_or_acquire`): each publish of a task, the pipeline that reserves a task for
the visibility timeout's restore, the one that acks it. redis-py 8's constructor fills a
case-insensitive dict of about 170 response callbacks, so on the bench that was about a fifth of
a worker's main process's CPU and a good part of a publish (bench/README.md, "Celery rows"). The
clients share the channel's connection pool either way, so one client per pool does the same
commands over the same connections; redis-py's client is safe to share between threads (each
command or pipeline takes a connection of the pool for itself).

The cached client follows the channel's pool: kombu drops the pool after a fork and on
`_disconnect_pools`, and builds another on next use; a client of a dropped pool is never used
again. Nothing else of the transport changes. `celery_app.celery_config()` names it as
`broker_transport` for `redis://` and `rediss://` brokers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    """A Redis channel that reuses one synchronous client per connection pool."""

    _reused: tuple[Any, Any] | None = None  # (the pool, its client)

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        pool = self.pool  # kombu builds a new pool after a fork or a disconnect
        reused = self._reused
        if reused is None or reused[0] is not pool:
            reused = self._reused = (pool, self._create_client())
        yield reused[1]


class Transport(kombu_redis.Transport):
    Channel = Channel
