"""Failed authentications (issue 9, finding 7): counted per client address and per username on
/token, across every route, answered 429 with Retry-After past AUTH_FAIL_LIMIT, without ever
refusing a correct key or password presented from an address that has not failed itself."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
from limits.storage import RedisStorage

from mailservice.api import auth_guard
from mailservice.api.auth_guard import AuthGuard, client_id
from mailservice.errors import ApiError
from mailservice.testing.redis_server import RedisServer
from tests.conftest import API_KEY, OTHER_KEY, OTHER_SENDER, SENDER, send, wait_for

ATTACKER = "198.51.100.7"
USER = "203.0.113.9"
SECRETS = (API_KEY, OTHER_KEY)
SEED_000 = {"recipient": "user@example.com", "subject": "Hi", "body": "Hello"}


def at(address: str) -> dict[str, Any]:
    """Test-client keyword arguments for a request from this client address."""
    return {"environ_base": {"REMOTE_ADDR": address}}


def login(client, address: str, password: str, username: str = SENDER):
    return client.post("/token", data={"username": username, "password": password}, **at(address))


def assert_429(response, limit_seconds: int = 60) -> dict[str, Any]:
    """A 429 problem answer with a Retry-After within the window, showing no key."""
    assert response.status_code == 429, response.get_data(as_text=True)[:300]
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["status"] == 429
    assert {"type", "title", "detail"} <= body.keys()
    assert 1 <= int(response.headers["Retry-After"]) <= limit_seconds
    for secret in SECRETS:
        assert secret not in response.get_data(as_text=True)
    return body


@pytest.fixture
def guarded(make_app, smtp_server):
    """An app with AUTH_FAIL_LIMIT=5/minute on memory storage; its test client."""
    return make_app(smtp_server.port, auth_fail_limit="5/minute").test_client()


# -- per address ------------------------------------------------------------------------------


def test_wrong_keys_from_one_address_get_429_after_the_limit_and_other_addresses_still_send(
    guarded,
):
    codes = [send(guarded, key=f"guess-{i}", **at(ATTACKER)).status_code for i in range(8)]
    assert codes == [401] * 5 + [429] * 3
    assert "Too many failed authentications" in assert_429(send(guarded, **at(ATTACKER)))["detail"]
    # The real key from another address is never refused.
    assert send(guarded, **at(USER)).status_code == 202
    assert send(guarded, key=OTHER_KEY, **at("192.0.2.200")).status_code == 202


def test_a_correct_key_from_an_address_past_the_limit_is_refused_too(guarded):
    """Otherwise the one 202 among the 429s would tell a guesser which guess was right."""
    for i in range(5):
        send(guarded, key=f"guess-{i}", **at(ATTACKER))
    assert_429(send(guarded, key=API_KEY, **at(ATTACKER)))
    assert_429(login(guarded, ATTACKER, API_KEY))


def test_failures_count_across_every_route(guarded, smtp_server):
    bad = {"Authorization": "Bearer not-a-key-or-token"}
    assert send(guarded, key="wrong", **at(ATTACKER)).status_code == 401
    assert guarded.post("/mail", json=SEED_000, headers=bad, **at(ATTACKER)).status_code == 401
    seed_004 = {"to": "user@example.com", "subject": "Hi", "message": "Hello"}
    answer = guarded.post("/smtp/send-email", json=seed_004, headers=bad, **at(ATTACKER))
    assert answer.status_code == 401
    email_to = {"email_to": "user@example.com", "subject": "Hi", "message": {"text": "x"}}
    assert guarded.post("/send-email/", json=email_to, **at(ATTACKER)).status_code == 401
    assert login(guarded, ATTACKER, "wrong").status_code == 401
    for path, body in (("/mail", SEED_000), ("/smtp/send-email", seed_004)):
        assert_429(guarded.post(path, json=body, headers=bad, **at(ATTACKER)))
    assert_429(login(guarded, ATTACKER, API_KEY, username=OTHER_SENDER))
    assert smtp_server.received == []


def test_a_success_does_not_reset_the_count(guarded):
    """A client with one valid key of its own may not clear its count between guesses."""
    for i in range(4):
        assert send(guarded, key=f"guess-{i}", **at(ATTACKER)).status_code == 401
    assert send(guarded, key=OTHER_KEY, **at(ATTACKER)).status_code == 202
    assert send(guarded, key="guess-4", **at(ATTACKER)).status_code == 401
    assert_429(send(guarded, key=OTHER_KEY, **at(ATTACKER)))


def test_addresses_of_one_ipv6_slash_64_share_a_count(guarded):
    for i in range(5):
        send(guarded, key=f"guess-{i}", **at(f"2001:db8:1:2::{i + 1:x}"))
    assert_429(send(guarded, key="guess", **at("2001:db8:1:2:ffff::1")))
    assert send(guarded, **at("2001:db8:1:3::1")).status_code == 202


def test_statuses_and_health_are_not_refused_to_an_address_past_the_limit(guarded):
    for i in range(5):
        send(guarded, key=f"guess-{i}", **at(ATTACKER))
    assert guarded.get("/healthz", **at(ATTACKER)).status_code == 200


def test_with_rate_limit_on_the_429_also_carries_the_rate_limit_headers(make_app, smtp_server):
    app = make_app(smtp_server.port, auth_fail_limit="2/minute", rate_limit="600/minute")
    client = app.test_client()
    for i in range(2):
        send(client, key=f"guess-{i}", **at(ATTACKER))
    refused = send(client, **at(ATTACKER))
    assert_429(refused)
    assert refused.headers["X-RateLimit-Limit"] == "600"
    assert "X-RateLimit-Remaining" in refused.headers
    assert "X-RateLimit-Reset" in refused.headers


def test_empty_auth_fail_limit_turns_the_guard_off(make_app, smtp_server):
    client = make_app(smtp_server.port, auth_fail_limit="").test_client()
    codes = {send(client, key=f"guess-{i}", **at(ATTACKER)).status_code for i in range(50)}
    assert codes == {401}
    assert send(client, **at(ATTACKER)).status_code == 202


def test_the_default_limit_refuses_the_21st_guess_in_a_minute(make_app, smtp_server):
    """The issue's guesser made 8,444 tries in 20 s and got 401 every time."""
    client = make_app(smtp_server.port).test_client()  # AUTH_FAIL_LIMIT's default, 20/minute
    codes = [send(client, key=f"guess-{i}", **at(ATTACKER)).status_code for i in range(200)]
    assert codes == [401] * 20 + [429] * 180


# -- /token: per username, without locking out the real user -----------------------------------


def test_wrong_passwords_on_token_from_one_address_do_not_lock_out_the_user_elsewhere(guarded):
    assert [login(guarded, ATTACKER, f"guess-{i}").status_code for i in range(5)] == [401] * 5
    assert_429(login(guarded, ATTACKER, API_KEY))
    answer = login(guarded, USER, API_KEY)
    assert answer.status_code == 200
    token = answer.get_json()["access_token"]
    assert send(guarded, key=token, **at(USER)).status_code == 202


def test_guesses_at_one_username_spread_over_many_addresses_are_slowed(guarded):
    attackers = [f"198.51.100.{i}" for i in range(1, 6)]
    for address in attackers:  # one guess each: 5 failures for SENDER, none over 5 per address
        assert login(guarded, address, "guess").status_code == 401
    # The username is under attack: an address that has failed for it must wait...
    body = assert_429(login(guarded, attackers[0], "guess-again"))
    assert "for this username" in body["detail"]
    assert_429(login(guarded, attackers[0], API_KEY))
    # ...a fresh address gets one guess, then waits too...
    assert login(guarded, "198.51.100.99", "guess").status_code == 401
    assert_429(login(guarded, "198.51.100.99", "guess-again"))
    # ...and the real user, who has not failed, logs in; other usernames are untouched.
    assert login(guarded, USER, API_KEY).status_code == 200
    assert login(guarded, attackers[0], OTHER_KEY, username=OTHER_SENDER).status_code == 200
    # The per-username count is /token's only: the attackers' keys on the API are per address.
    assert send(guarded, key=OTHER_KEY, **at(attackers[1])).status_code == 202


def test_the_username_is_counted_whatever_its_case(guarded):
    for i, username in enumerate(
        ["Sender@Example.com", "SENDER@example.com", " sender@example.com"]
    ):
        login(guarded, f"198.51.100.{i}", "guess", username=username)
    for i in range(3, 5):
        login(guarded, f"198.51.100.{i}", "guess")
    assert_429(login(guarded, "198.51.100.0", "guess"))


# -- storage ----------------------------------------------------------------------------------


@pytest.mark.redis
def test_two_apps_on_one_redis_share_the_count(make_app, smtp_server, redis_server):
    apps = [
        make_app(
            smtp_server.port, auth_fail_limit="4/minute", rate_limit_storage_url=redis_server.url
        )
        for _ in range(2)
    ]
    first, second = (app.test_client() for app in apps)
    assert send(first, key="guess-1", **at(ATTACKER)).status_code == 401
    assert send(second, key="guess-2", **at(ATTACKER)).status_code == 401
    assert login(first, ATTACKER, "guess-3").status_code == 401
    assert login(second, ATTACKER, "guess-4").status_code == 401
    assert_429(send(first, key="guess-5", **at(ATTACKER)))
    assert_429(send(second, key="guess-6", **at(ATTACKER)))
    assert send(second, **at(USER)).status_code == 202
    assert login(first, USER, API_KEY).status_code == 200


@pytest.fixture
def own_redis(tmp_path: Path) -> Any:
    """A redis-server of this test's own, which the test stops and starts again."""
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.mark.redis
def test_with_redis_down_failures_are_counted_in_memory_then_in_redis_again(
    make_app, smtp_server, own_redis, monkeypatch, caplog
):
    # Every call the guard makes to Redis, counted where limits makes it (the rate limiter is
    # off here, so the guard is Redis's only user).
    asks: list[str] = []
    for name in ("get", "incr", "get_expiry", "check"):
        real = getattr(RedisStorage, name)

        def counting(
            self: RedisStorage, *args: Any, _real: Any = real, _name: str = name, **kw: Any
        ) -> Any:
            asks.append(_name)
            return _real(self, *args, **kw)

        monkeypatch.setattr(RedisStorage, name, counting)
    # Long enough that no recheck falls within the five requests, however slow the machine.
    monkeypatch.setattr(auth_guard, "RECHECK_SECONDS", 3600.0)
    app = make_app(
        smtp_server.port, auth_fail_limit="3/minute", rate_limit_storage_url=own_redis.url
    )
    client = app.test_client()
    assert send(client, **at(USER)).status_code == 202
    own_redis.stop()
    asks.clear()
    with caplog.at_level(logging.WARNING, logger="mailservice.api.auth_guard"):
        codes = [send(client, key=f"guess-{i}", **at(ATTACKER)).status_code for i in range(5)]
    assert codes == [401, 401, 401, 429, 429]
    # A dead Redis is asked once (the first request finds it down), then not again until
    # RECHECK_SECONDS have passed: no other request waits on it.
    assert asks == ["get"]
    assert len([r for r in caplog.records if "unreachable" in r.getMessage()]) == 1
    assert send(client, **at(USER)).status_code == 202
    assert asks == ["get"]

    monkeypatch.setattr(auth_guard, "RECHECK_SECONDS", 0.2)
    own_redis.start()
    # Once RECHECK_SECONDS have passed, a request tries Redis again and finds it.
    wait_for(
        lambda: send(client, **at(USER)).status_code == 202 and "reachable again" in caplog.text
    )
    # Redis is empty after its restart: counting starts afresh there.
    assert send(client, key="guess", **at(ATTACKER)).status_code == 401


# -- the pieces -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "counted_as"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("2001:db8::1", "2001:db8::/64"),
        ("2001:db8:0:0:ffff:1:2:3", "2001:db8::/64"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        (None, "unknown"),
        ("", "unknown"),
    ],
)
def test_client_id(address: str | None, counted_as: str):
    assert client_id(address) == counted_as


def test_a_guard_without_a_limit_never_refuses():
    guard = AuthGuard("")
    for _ in range(100):
        guard.failed(ATTACKER, SENDER)
    guard.check(ATTACKER, SENDER)
    assert not guard.enabled
    assert repr(guard) == "AuthGuard(off, storage=NoneType)"


def test_retry_after_is_the_time_left_in_the_window():
    offset = [0.0]  # seconds after the failures; the storage's own clock keeps the window
    guard = AuthGuard("2/minute", clock=lambda: time.time() + offset[0])
    guard.failed(ATTACKER)
    guard.failed(ATTACKER)
    for later, expected in ((0, (59, 60)), (45, (14, 15)), (59.5, (1, 1))):
        offset[0] = later
        with pytest.raises(ApiError) as refused:
            guard.check(ATTACKER)
        assert refused.value.status == 429
        assert expected[0] <= int(refused.value.headers["Retry-After"]) <= expected[1]
    guard.check(USER)  # another address may try
