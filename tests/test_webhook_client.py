"""The webhook HTTP client against real local receivers: signing, the address rules at connect
time, the address connected to, redirects, time-outs, refused connections and TLS."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailservice.errors import WebhookError
from mailservice.events.webhook_client import (
    USER_AGENT,
    WebhookClient,
    not_allowed,
    refuse_private,
    signature,
)
from mailservice.testing.ports import free_port
from mailservice.testing.smtp_servers import SilentServer
from mailservice.testing.webhook_receiver import WebhookReceiver, verify
from tests.conftest import wait_for

SECRET = "whk-test-secret-0123456789"
BODY = b'{"event":"email.sent","request_id":"r-1"}'


@pytest.fixture
def receiver() -> Iterator[Callable[..., WebhookReceiver]]:
    started: list[WebhookReceiver] = []

    def start(**options: Any) -> WebhookReceiver:
        server = WebhookReceiver(SECRET, **options).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def client(**options: Any) -> WebhookClient:
    values: dict[str, Any] = {"timeout": 2.0, "allow_private": True, **options}
    return WebhookClient(SECRET, **values)


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert signature(SECRET, 1700000000, BODY) == f"v1={expected}"
    headers = {"X-Mail-Timestamp": "1700000000", "X-Mail-Signature": f"v1={expected}"}
    assert verify(SECRET, headers, BODY, now=1700000100)
    assert not verify(SECRET, headers, BODY, now=1700000000 + 301), "an old timestamp: a replay"
    assert not verify(SECRET, headers, BODY + b" ", now=1700000000), "another body"


def test_a_signed_post_names_the_host_and_the_service(receiver) -> None:
    server = receiver()
    before = int(time.time())
    assert client().post(server.url("/hooks/mail?token=t1", host="localhost"), BODY) == 200
    (hit,) = server.hits
    assert hit.signed and hit.body == BODY and hit.path == "/hooks/mail?token=t1"
    assert before <= int(hit.headers["X-Mail-Timestamp"]) <= int(time.time())
    assert hit.headers["Host"] == f"localhost:{server.port}", "the URL's host, not the address"
    assert hit.headers["Content-Type"] == "application/json"
    assert hit.headers["User-Agent"] == USER_AGENT and USER_AGENT.startswith("mail-service/")
    assert SECRET not in repr(client())


@pytest.mark.parametrize(
    ("status", "reason"),
    [(500, "answered 500"), (404, "answered 404"), (302, "redirects are not followed")],
)
def test_an_answer_other_than_2xx_fails_the_try_and_redirects_are_not_followed(
    receiver, status: int, reason: str
) -> None:
    elsewhere = receiver()
    server = receiver(answers=[status], headers={"Location": elsewhere.url()})
    with pytest.raises(WebhookError, match=reason):
        client().post(server.url(), BODY)
    assert len(server.hits) == 1
    assert elsewhere.hits == [], "the redirect's target got nothing"


def test_a_receiver_that_never_answers_times_out() -> None:
    silent = SilentServer().start()
    try:
        with pytest.raises(WebhookError, match=r"no answer within 0\.3 s"):
            client(timeout=0.3).post(f"http://127.0.0.1:{silent.port}/", BODY)
        assert silent.connections == 1
    finally:
        silent.stop()


def outcome_of(attempt: Callable[[], object], within: float = 5.0) -> str:
    """The reason `attempt` (a try) failed with, waiting for it at most `within` seconds."""
    outcome: list[str] = []

    def run() -> None:
        try:
            attempt()
            outcome.append("delivered")
        except WebhookError as exc:
            outcome.append(exc.reason)

    threading.Thread(target=run, daemon=True).start()
    return wait_for(lambda: outcome, timeout=within)[0]


def test_a_receiver_that_drips_its_answer_is_cut_off_at_the_timeout(receiver) -> None:
    # One byte every 0.2 s: no read ever waits 0.5 s, yet the answer would take hours.
    server = receiver(drip=0.2)
    reason = outcome_of(lambda: client(timeout=0.5).post(server.url(), BODY))
    assert reason == "no answer within 0.5 s"
    assert len(server.hits) == 1
    wait_for(lambda: server.dripping == 0)  # the connection was shut, not kept for the next try


def test_a_receiver_that_drips_over_tls_is_cut_off_too(receiver, tls_files) -> None:
    cert, key = tls_files
    server = receiver(tls=(cert, key), drip=0.2)
    url = server.url(host="localhost", scheme="https")
    reason = outcome_of(lambda: client(timeout=0.5, ca_file=str(cert)).post(url, BODY))
    assert reason == "no answer within 0.5 s"
    wait_for(lambda: server.dripping == 0)


def test_a_refused_connection_fails_the_try() -> None:
    with pytest.raises(WebhookError, match=r"cannot connect to 127\.0\.0\.1: Connection refused"):
        client().post(f"http://127.0.0.1:{free_port()}/", BODY)


def test_a_private_address_is_refused_at_connect_time_unless_allowed(receiver) -> None:
    server = receiver()
    for url in (server.url(), server.url(host="localhost")):
        with pytest.raises(WebhookError, match=r"127\.0\.0\.1.* a loopback address"):
            client(allow_private=False).post(url, BODY)
    assert server.hits == [], "nothing was connected to"
    assert client(allow_private=True).post(server.url(), BODY) == 200


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),  # noqa: S104
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("fc00::1", "private"),
        ("100.64.0.1", "not a public address"),
        ("::ffff:10.0.0.1", "private"),  # IPv4-mapped
        ("::ffff:127.0.0.1", "loopback"),
        ("2002:a00:1::", "private"),  # 6to4 of 10.0.0.1
        ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
    ],
)
def test_addresses_webhooks_may_not_reach(address: str, reason: str) -> None:
    found = not_allowed(ipaddress.ip_address(address))
    assert found is not None and reason in found


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2001:4860:4860::8888"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert not_allowed(ipaddress.ip_address(address)) is None


def test_every_resolved_address_is_checked() -> None:
    with pytest.raises(WebhookError, match=r"hooks\.example resolves to 10\.0\.0\.1, a private"):
        refuse_private("hooks.example", ["93.184.216.34", "10.0.0.1"])
    refuse_private("hooks.example", ["93.184.216.34", "2001:4860:4860::8888"])


class StubResolver:
    """getaddrinfo that answers for names under `.example` from a script (this machine has no
    DNS server to point at) and asks the real one for everything else; records the names.
    Names under `.slow.example` get no answer until `release` is set (a name server that
    never answers), which the test's end does."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, answers: list[list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []
        self.release = threading.Event()
        self._real = socket.getaddrinfo
        monkeypatch.setattr(socket, "getaddrinfo", self)

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        self.asked.append(str(host))
        if not str(host).endswith(".example"):
            return self._real(host, port, *args, **kwargs)
        if str(host).endswith(".slow.example"):
            self.release.wait(60)
        addresses = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in addresses
        ]


@pytest.fixture
def stub_resolver(monkeypatch) -> Iterator[Callable[[list[list[str]]], StubResolver]]:
    made: list[StubResolver] = []

    def make(answers: list[list[str]]) -> StubResolver:
        made.append(StubResolver(monkeypatch, answers))
        return made[-1]

    yield make
    for resolver in made:
        resolver.release.set()  # lookups still held end now


def test_a_name_server_that_never_answers_fails_the_try_at_the_timeout(stub_resolver) -> None:
    resolver = stub_resolver([["127.0.0.1"]])
    reason = outcome_of(lambda: client(timeout=0.3).post("http://hooks.slow.example/", BODY))
    assert reason == "resolving hooks.slow.example took longer than 0.3 s"
    assert resolver.asked == ["hooks.slow.example"]


def test_the_address_checked_is_the_one_connected_to(receiver, monkeypatch) -> None:
    server = receiver()
    resolver = StubResolver(monkeypatch, [["127.0.0.1"]])
    assert client().post(f"http://hooks.example:{server.port}/in", BODY) == 200
    assert resolver.asked.count("hooks.example") == 1, "urllib3 did not resolve it again"
    assert server.hits[0].headers["Host"] == f"hooks.example:{server.port}"


def test_a_name_resolving_to_a_private_address_is_refused_before_connecting(
    receiver, monkeypatch
) -> None:
    # DNS rebinding itself (public at send time, private at the try) is end to end, in
    # test_webhooks.py: the try's own lookup is the one that counts.
    server = receiver()
    StubResolver(monkeypatch, [["127.0.0.1"]])
    with pytest.raises(WebhookError, match=r"hooks\.example resolves to 127\.0\.0\.1, a loopback"):
        client(allow_private=False).post(f"http://hooks.example:{server.port}/", BODY)
    assert server.hits == []


def test_the_next_address_is_tried_when_one_cannot_be_connected_to(receiver, monkeypatch) -> None:
    server = receiver()
    # Nothing listens on 127.0.0.2 at that port: refused at once, then 127.0.0.1 answers.
    StubResolver(monkeypatch, [["127.0.0.2", "127.0.0.1"]])
    assert client().post(f"http://hooks.example:{server.port}/", BODY) == 200
    assert len(server.hits) == 1


def test_a_name_that_does_not_resolve_fails_the_try() -> None:
    with pytest.raises(WebhookError, match=r"nonexistent\.invalid does not resolve"):
        client().post("http://nonexistent.invalid/", BODY)


def test_connections_to_one_receiver_are_reused(receiver) -> None:
    server = receiver()
    kept = client()
    for _ in range(3):
        assert kept.post(server.url(), BODY) == 200
    assert len(server.hits) == 3
    assert len({hit.peer_port for hit in server.hits}) == 1, "one connection carried the three"


def make_cert(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "2", "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}",
            "-addext", f"subjectAltName=DNS:{name}",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_https_verifies_the_urls_host_while_connecting_to_its_address(
    receiver, tls_files, tmp_path
) -> None:
    cert, key = tls_files  # for localhost and 127.0.0.1
    server = receiver(tls=(cert, key))
    url = server.url(host="localhost", scheme="https")
    assert client(ca_file=str(cert)).post(url, BODY) == 200
    assert server.hits[0].headers["Host"] == f"localhost:{server.port}"
    with pytest.raises(WebhookError, match="TLS failed"):
        client().post(url, BODY)  # self-signed: not in the system's trust store
    other = receiver(tls=make_cert(tmp_path, "other.example"))
    with pytest.raises(WebhookError, match="TLS failed"):  # a certificate for another name
        client(ca_file=str(tmp_path / "other.example.pem")).post(
            other.url(host="localhost", scheme="https"), BODY
        )
    assert other.hits == []


def readme_receiver() -> Callable[..., bool]:
    """The `verified()` of the README's webhooks section, run as a reader would copy it."""
    text = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### Webhooks") :]
    start = section.index("```python\n") + len("```python\n")
    namespace: dict[str, Any] = {}
    exec(section[start : section.index("```", start)], namespace)  # noqa: S102 - our own README
    return namespace["verified"]


def test_the_readme_receiver_accepts_a_real_try_and_refuses_a_forgery(receiver) -> None:
    verified = readme_receiver()
    server = receiver()
    client().post(server.url(), BODY)
    hit = server.hits[0]
    assert verified(SECRET, hit.headers, hit.body)
    assert not verified(SECRET, hit.headers, hit.body + b" "), "another body"
    assert not verified("another secret", hit.headers, hit.body)
    stale = {**hit.headers, "X-Mail-Timestamp": str(int(hit.headers["X-Mail-Timestamp"]) - 301)}
    assert not verified(SECRET, stale, hit.body), "a replay of a try 5 minutes old"


@pytest.mark.parametrize(
    "forged",
    [
        {"X-Mail-Timestamp": "\u00b2\u00b3"},  # digits to str.isdigit(), not to int()
        {"X-Mail-Signature": "v1=\u00e9" + "0" * 63},  # latin-1, as a WSGI header arrives
        {"X-Mail-Timestamp": ""},
        {"X-Mail-Signature": ""},
    ],
)
def test_the_readme_receiver_refuses_forged_headers_without_raising(receiver, forged) -> None:
    verified = readme_receiver()
    server = receiver()
    client().post(server.url(), BODY)
    hit = server.hits[0]
    assert verified(SECRET, {**hit.headers, **forged}, hit.body) is False
