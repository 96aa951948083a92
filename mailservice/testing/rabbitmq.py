"""A RabbitMQ vhost of a test's own, on the machine's RabbitMQ server, for tests and the bench.

RabbitMQ is not a throw-away binary like redis-server (an Erlang node takes seconds to boot and
wants its own data folder and cookie), so tests share the machine's server, named by
`RABBITMQ_URL`, and keep apart by vhost: `RabbitVhost().start()` creates `mailtest-<hex>` and
gives the URL's user every permission on it, `url` is that URL with the vhost, and `stop()`
deletes the vhost with everything in it, leaving the server as found. It runs `rabbitmqctl`,
which Debian's rabbitmq-server package always has (the management HTTP API is a plugin that may
be off) and which manages the local node only: RABBITMQ_URL must name this machine's server.
`rabbitmq_answers()` checks a server quickly; `require_rabbitmq()` skips a test without one on a
developer's machine and fails it under CI=true; it alone imports pytest, so the bench can use
this module where pytest is not installed.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import kombu
import kombu.exceptions

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672//"
DEFAULT_PORT = 5672
# A server that answers does so within milliseconds on loopback; this bounds the wait for one
# that does not (a firewall dropping packets) without slowing a test run that has none.
ANSWER_TIMEOUT = 2.0
# rabbitmqctl boots an Erlang VM for each call (one to two seconds); this bounds a stuck node.
CTL_TIMEOUT = 60.0
VHOST_PREFIX = "mailtest-"
MISSING = (
    "RabbitMQ does not answer at {url} (apt-get install rabbitmq-server; rabbitmq-server "
    "-detached), or rabbitmqctl is missing"
)


def server_url() -> str:
    """The machine's RabbitMQ server: RABBITMQ_URL, or guest on 127.0.0.1:5672, vhost "/"."""
    return os.environ.get("RABBITMQ_URL") or DEFAULT_URL


def find_rabbitmqctl() -> str | None:
    """The path of rabbitmqctl (in /usr/sbin, which a user's PATH may lack), or None."""
    return shutil.which("rabbitmqctl") or shutil.which("rabbitmqctl", path="/usr/sbin:/sbin")


def rabbitmq_answers(url: str | None = None) -> bool:
    """Whether a server at `url` accepts a TCP connection and the AMQP handshake (login and
    vhost included), within ANSWER_TIMEOUT."""
    url = url or server_url()
    parts = urlsplit(url)
    try:
        # A plain connect first: kombu's own time-outs do not cover every step of a refusal.
        socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or DEFAULT_PORT), timeout=ANSWER_TIMEOUT
        ).close()
    except OSError:
        return False
    connection = kombu.Connection(url, connect_timeout=ANSWER_TIMEOUT)
    try:
        connection.ensure_connection(max_retries=1, interval_start=0, timeout=ANSWER_TIMEOUT)
        return True
    except (
        OSError,
        kombu.exceptions.KombuError,
        *connection.connection_errors,
        *connection.channel_errors,
    ):
        return False
    finally:
        connection.release()


def require_rabbitmq() -> str:
    """For a test: the server's URL; without a server that answers, or without rabbitmqctl,
    the test is skipped (failed under CI=true, where RabbitMQ is a required part)."""
    import pytest  # here, not at the top: the bench uses this module without pytest

    url = server_url()
    if find_rabbitmqctl() is None or not rabbitmq_answers(url):
        message = MISSING.format(url=redact(url))
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return url


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:**@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def with_vhost(url: str, vhost: str) -> str:
    """`url` naming `vhost` instead of its own (in an AMQP URL the path is the vhost)."""
    return urlunsplit(urlsplit(url)._replace(path="/" + quote(vhost, safe="")))


def rabbitmqctl(*args: str) -> str:
    """Run one rabbitmqctl command against the local node; its output. RuntimeError (with what
    it said) when it fails."""
    binary = find_rabbitmqctl()
    if binary is None:
        raise RuntimeError("rabbitmqctl is not installed (apt-get install rabbitmq-server)")
    done = subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=CTL_TIMEOUT, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr.strip() or done.stdout}")
    return done.stdout


def list_vhosts() -> list[str]:
    """The server's vhosts, by name."""
    return rabbitmqctl("list_vhosts", "--quiet", "--no-table-headers", "name").split()


class RabbitVhost:
    """A fresh vhost on the server at `base_url` (RABBITMQ_URL by default), for its user."""

    def __init__(self, base_url: str | None = None) -> None:
        self.base_url = base_url or server_url()
        self.user = unquote(urlsplit(self.base_url).username or "guest")
        self.name = VHOST_PREFIX + secrets.token_hex(6)
        self.created = False

    @property
    def url(self) -> str:
        """The AMQP URL of the vhost, with the server's user and password."""
        return with_vhost(self.base_url, self.name)

    def start(self) -> RabbitVhost:
        """Create the vhost and give the user configure, write and read on everything in it."""
        rabbitmqctl("add_vhost", self.name)
        self.created = True
        try:
            rabbitmqctl("set_permissions", "-p", self.name, self.user, ".*", ".*", ".*")
        except RuntimeError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Delete the vhost, its queues, exchanges and messages with it."""
        if self.created:
            rabbitmqctl("delete_vhost", self.name)
            self.created = False
