"""Shared fixtures: real SMTP servers, an app factory with explicit settings, waiting helpers."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from mail_server import EXTENSION, create_app
from mailservice.config import Settings
from mailservice.testing.smtp_servers import GreetingServer, SmtpServer

API_KEY = "test-key-0123456789"
OTHER_KEY = "other-key-9876543210"
SENDER = "sender@example.com"
OTHER_SENDER = "other@example.org"
FINAL_STATUSES = ("sent", "failed", "expired", "canceled")
# The members of GET /email-status/<id> (API.md section 4), no more, no fewer.
STATUS_KEYS = {
    "request_id",
    "status",
    "error",
    "attempts",
    "sender",
    "recipients",
    "refused",
    "metadata",
    "tags",
    "webhook",
    "created_at",
    "updated_at",
    "send_at",
    "expires_at",
}


class ManualClock:
    """A clock (monotonic or wall) that moves only when the test moves it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01) -> Any:
    """Poll until predicate() is truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


@pytest.fixture
def start_smtp() -> Iterator[Callable[..., SmtpServer]]:
    """Start extra SMTP servers with options (TLS, logins, idle timeout...)."""
    servers: list[SmtpServer] = []

    def start(**options: Any) -> SmtpServer:
        server = SmtpServer(**options).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def smtp_server(start_smtp: Callable[..., SmtpServer]) -> SmtpServer:
    return start_smtp()


@pytest.fixture
def greeting_server() -> Iterator[GreetingServer]:
    """A server that greets every connection with 421 and hangs up."""
    server = GreetingServer().start()
    yield server
    server.stop()


def celery_env(
    folder: Path, smtp_port: int, redis_port: int, store_db: int, broker_db: int, **extra: str
) -> dict[str, str]:
    """The environment of a small DISPATCHER=celery deployment: the test sender on the SMTP
    server at `smtp_port`, the store and the broker in two databases of a test's redis-server;
    `extra` adds or replaces variables."""
    base = f"redis://127.0.0.1:{redis_port}"
    return {
        "SENDERS_FILE": str(write_senders(folder / "data.csv", smtp_port)),
        "EMAIL_LOG": str(folder / "email_log.txt"),
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_port),
        "SMTP_SECURITY": "none",
        "STATUS_STORE_URL": f"{base}/{store_db}",
        "DISPATCHER": "celery",
        "CELERY_BROKER_URL": f"{base}/{broker_db}",
        "PIN_CPUS": "0",
        **extra,
    }


def write_senders(
    path: Path,
    port: int,
    security: str = "none",
    password: str = "",
    other_port: int | None = None,
) -> Path:
    """Two senders: API_KEY's on `port`, OTHER_KEY's on `other_port` (default the same)."""
    other_port = other_port or port
    path.write_text(
        "key,email,app_password,smtp_host,smtp_port,smtp_security,name\n"
        f"{API_KEY},{SENDER},{password},127.0.0.1,{port},{security},Test Sender\n"
        f"{OTHER_KEY},{OTHER_SENDER},{password},127.0.0.1,{other_port},{security},\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def make_app(
    tmp_path: Path, start_smtp: Callable[..., SmtpServer]
) -> Iterator[Callable[..., Flask]]:
    """Build apps whose senders send to the given SMTP port; drained after the test.

    It depends on `start_smtp` so that its apps are drained before the SMTP servers stop: a
    worker still sending must not open a new connection to a server that is shutting down.
    """
    apps: list[Flask] = []

    def factory(
        smtp_port: int,
        security: str = "none",
        password: str = "",
        other_port: int | None = None,
        **overrides: Any,
    ) -> Flask:
        senders = write_senders(tmp_path / "data.csv", smtp_port, security, password, other_port)
        values: dict[str, Any] = {
            "senders_file": str(senders),
            "email_log": str(tmp_path / "email_log.txt"),
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp_port,
            "smtp_security": security,
            "smtp_timeout": 5.0,  # generous: only a hung server should ever reach it
            "workers": 2,
            "retry_backoff": 0.05,
            "max_attempts": 3,
            "rate_limit": "",
            "smtp_server_pause": 0.2,  # a server that fails to greet is paused only briefly
        }
        values.update(overrides)
        app = create_app(Settings(**values))
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.extensions[EXTENSION].shutdown(0)
        app.extensions[EXTENSION].store.close()


@pytest.fixture
def app(make_app: Callable[..., Flask], smtp_server: SmtpServer) -> Flask:
    return make_app(smtp_server.port)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def send(client: FlaskClient, body: dict[str, Any] | None = None, key: str = API_KEY, **kw: Any):
    """POST /send-email with a JSON body and the test key."""
    payload = {"recipient": "user@example.com", "subject": "Hi", "body": "Hello"}
    if body is not None:
        payload = body
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    headers.update(kw.pop("headers", {}))
    return client.post("/send-email", json=payload, headers=headers, **kw)


def wait_final(client: FlaskClient, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """Poll GET /email-status until the request is final (sent, failed, expired, canceled)."""

    def final() -> dict[str, Any] | None:
        body = client.get(f"/email-status/{request_id}").get_json()
        return body if body and body["status"] in FINAL_STATUSES else None

    return wait_for(final, timeout)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost, made with the openssl command."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="session")
def redis_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One redis-server for the session (tests that stop Redis start their own)."""
    from mailservice.testing.redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_server(redis_session: Any) -> Any:
    """The session's redis-server, emptied for this test."""
    redis_session.flush()
    return redis_session
