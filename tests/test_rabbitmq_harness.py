"""The harness's RabbitMQ vhost: created for a test, usable over AMQP, gone afterwards."""

from __future__ import annotations

import kombu
import pytest

from mailservice.testing.ports import free_port
from mailservice.testing.rabbitmq import (
    RabbitVhost,
    list_vhosts,
    rabbitmq_answers,
    require_rabbitmq,
    with_vhost,
)


@pytest.mark.rabbitmq
def test_a_vhost_carries_a_message_and_is_deleted_afterwards() -> None:
    require_rabbitmq()
    vhost = RabbitVhost().start()
    try:
        assert vhost.name in list_vhosts()
        with kombu.Connection(vhost.url, connect_timeout=5) as connection:
            queue = connection.SimpleQueue("harness-check")
            try:
                queue.put({"hello": vhost.name})
                message = queue.get(timeout=10)
                assert message.payload == {"hello": vhost.name}
                message.ack()
            finally:
                queue.close()
    finally:
        vhost.stop()
    assert vhost.name not in list_vhosts()
    assert not rabbitmq_answers(vhost.url)  # the user can no longer open it


def test_answers_is_false_where_nothing_listens() -> None:
    assert not rabbitmq_answers(f"amqp://guest:guest@127.0.0.1:{free_port()}//")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://guest:guest@127.0.0.1:5672//", "amqp://guest:guest@127.0.0.1:5672/mailtest-ab"),
        ("amqp://u:p%40ss@localhost/", "amqp://u:p%40ss@localhost/mailtest-ab"),
    ],
)
def test_with_vhost_replaces_the_path(url: str, expected: str) -> None:
    assert with_vhost(url, "mailtest-ab") == expected
