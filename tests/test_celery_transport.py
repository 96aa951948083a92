"""The Redis broker transport with one client per channel (mailservice/celery_transport.py),
on a real redis-server: messages go and come as with kombu's own, over one reused client that
follows the channel's pool."""

from __future__ import annotations

from typing import Any

import pytest
from kombu import Connection

from mailservice.celery_transport import Channel, Transport

pytestmark = pytest.mark.redis


@pytest.fixture
def connection(redis_server: Any) -> Any:
    conn = Connection(redis_server.url, transport=Transport)
    yield conn
    conn.release()


def test_messages_go_and_come_back_through_it(connection: Any) -> None:
    queue = connection.SimpleQueue("transport-test")
    try:
        for n in range(3):
            queue.put({"n": n})
        got = []
        for _ in range(3):
            message = queue.get(timeout=5)
            got.append(message.payload["n"])
            message.ack()
        assert got == [0, 1, 2]
        with pytest.raises(queue.Empty):
            queue.get(block=False)
    finally:
        queue.close()


def test_one_client_per_pool_a_new_one_after_the_pool_is_dropped(connection: Any) -> None:
    channel = connection.default_channel
    assert isinstance(channel, Channel)
    with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
        assert first is second
        assert first.ping()
    channel._disconnect_pools()  # as kombu does after a fork
    with channel.conn_or_acquire() as third:
        assert third is not first
        assert third.connection_pool is channel.pool
        assert third.ping()
    given = object()
    with channel.conn_or_acquire(given) as passed:
        assert passed is given  # a client passed in is used as it is
