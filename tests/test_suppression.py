"""The suppression list on the send path and its admin API (API.md section 3, "Suppression
list"): a real aiosmtpd sink refusing one address with `550 5.1.1` at RCPT, the app's own
dispatcher, and the Flask test client for /admin/suppressions."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from mailservice.delivery.suppression import SUPPRESSED, SuppressionFilter, no_such_user
from mailservice.errors import StoreError
from mailservice.stores.contract import EmailStatus, StatusRecord, utcnow
from mailservice.stores.memory_store import MemoryStatusStore
from mailservice.testing.smtp_servers import SmtpServer
from tests.conftest import API_KEY, OTHER_KEY, OTHER_SENDER, SENDER, send, wait_final

TOKEN = "admin-token-for-suppression-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
GONE = "gone@example.net"
UNKNOWN = f"550 5.1.1 <{GONE}>: Recipient address rejected: User unknown"


@pytest.fixture
def sink(smtp_server: SmtpServer) -> SmtpServer:
    smtp_server.handler.refuse[GONE] = UNKNOWN  # every RCPT TO it, for the whole test
    return smtp_server


@pytest.fixture
def client(make_app: Callable[..., Flask], sink: SmtpServer) -> FlaskClient:
    return make_app(sink.port, admin_token=TOKEN).test_client()


def send_to(client: FlaskClient, *recipients: str, key: str = API_KEY) -> dict[str, Any]:
    body = {"recipient": list(recipients), "subject": "Hi", "body": "Hello"}
    answer = send(client, body, key=key)
    assert answer.status_code == 202, answer.get_json()
    return wait_final(client, answer.get_json()["request_id"])


def entries(client: FlaskClient, **query: str) -> list[dict[str, Any]]:
    answer = client.get("/admin/suppressions", query_string=query, headers=ADMIN)
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()["entries"]


# -- the send path -----------------------------------------------------------------------------


def test_a_recipient_refused_as_unknown_is_suppressed_and_never_asked_again(
    client: FlaskClient, sink: SmtpServer
) -> None:
    first = send_to(client, GONE, "one@example.net")
    assert first["status"] == "sent" and first["refused"] == {GONE: UNKNOWN}
    assert sink.handler.asked == [GONE, "one@example.net"]
    (entry,) = entries(client, sender=SENDER)
    assert (entry["sender"], entry["address"], entry["reason"]) == (SENDER, GONE, UNKNOWN)

    # Again, with its local part in another case and a good recipient: the server hears only
    # of the good one.
    asked = len(sink.handler.asked)
    second = send_to(client, "Gone@Example.NET", "two@example.net")
    assert second["status"] == "sent"
    assert second["refused"] == {"Gone@example.net": SUPPRESSED + UNKNOWN}  # as recorded
    assert sink.handler.asked[asked:] == ["two@example.net"]
    assert sink.received[-1].rcpt_tos == ["two@example.net"]

    # Only to it: failed, and no SMTP transaction or connection at all.
    transactions, connections = sink.handler.transactions, sink.handler.connections
    third = send_to(client, GONE)
    assert third["status"] == "failed" and third["attempts"] == 1
    assert third["refused"] == {GONE: SUPPRESSED + UNKNOWN}
    assert third["error"] == f"every recipient was refused: {GONE}: suppressed: {UNKNOWN}"
    assert (sink.handler.transactions, sink.handler.connections) == (transactions, connections)
    assert sink.handler.asked[asked:] == ["two@example.net"], "never asked again"


def test_a_retry_by_hand_takes_its_recipients_off_the_list(
    client: FlaskClient, sink: SmtpServer
) -> None:
    failed = send_to(client, GONE)
    assert failed["status"] == "failed" and len(entries(client)) == 1
    assert send_to(client, GONE)["refused"] == {GONE: SUPPRESSED + UNKNOWN}
    del sink.handler.refuse[GONE]  # the mailbox was created: the cause is fixed
    retried = client.post(f"/email-status/{failed['request_id']}/retry", headers={
        "Authorization": f"Bearer {API_KEY}"})  # fmt: skip
    assert retried.status_code == 202, retried.get_json()
    assert wait_final(client, failed["request_id"])["status"] == "sent"
    assert entries(client) == []
    assert sink.received[-1].rcpt_tos == [GONE]


def test_a_dry_run_leaves_suppressed_recipients_out_of_its_envelope_as_a_send_does(
    client: FlaskClient, sink: SmtpServer
) -> None:
    send_to(client, GONE)  # now on the list
    body = {"recipient": [GONE, "one@example.net"], "subject": "Hi", "body": "Hello"}
    preview = send(client, {**body, "dry_run": True}).get_json()
    assert preview["envelope"]["rcpt_to"] == ["one@example.net"]
    assert preview["suppressed"] == {GONE: UNKNOWN}
    assert "To: gone@example.net, one@example.net\r\n" in preview["message"]  # headers kept
    assert send_to(client, *body["recipient"])["refused"] == {GONE: SUPPRESSED + UNKNOWN}
    assert sink.received[-1].rcpt_tos == preview["envelope"]["rcpt_to"]

    # Only to it: an empty envelope, as the real send makes no transaction at all.
    connections = sink.handler.connections
    only = send(client, {"recipient": GONE, "subject": "Hi", "body": "x", "dry_run": True})
    assert only.get_json()["envelope"]["rcpt_to"] == []
    assert only.get_json()["suppressed"] == {GONE: UNKNOWN}
    assert sink.handler.connections == connections

    # Another sender's list is its own: nobody is left out of its dry run.
    other = send(client, {**body, "dry_run": True}, key=OTHER_KEY).get_json()
    assert other["envelope"]["rcpt_to"] == body["recipient"] and other["suppressed"] == {}


def test_each_sender_has_its_own_list(client: FlaskClient, sink: SmtpServer) -> None:
    send_to(client, GONE, "one@example.net")
    asked = len(sink.handler.asked)
    other = send_to(client, GONE, "one@example.net", key=OTHER_KEY)
    assert other["refused"] == {GONE: UNKNOWN}, "the other account asks the server itself"
    assert sink.handler.asked[asked:] == [GONE, "one@example.net"]
    assert [e["sender"] for e in entries(client)] == [OTHER_SENDER, SENDER]


@pytest.mark.parametrize(
    "reply",
    ["550 5.7.1 relaying denied", "550 5.1.10 RESOLVER.ADR.RecipientNotFound", "553 5.1.1 bad"],
)
def test_other_permanent_refusals_are_not_suppressed(
    client: FlaskClient, sink: SmtpServer, reply: str
) -> None:
    sink.handler.refuse[GONE] = reply
    assert send_to(client, GONE, "one@example.net")["refused"] == {GONE: reply}
    assert entries(client) == []
    asked = len(sink.handler.asked)
    send_to(client, GONE, "one@example.net")
    assert sink.handler.asked[asked:] == [GONE, "one@example.net"]


def test_the_no_such_user_codes() -> None:
    for reply in ("550 5.1.1 no such user", "550 5.1.0 unknown", "550 5.2.1 mailbox disabled"):
        assert no_such_user(reply), reply
    for reply in ("550 5.1.10 not found", "550 5.7.1 denied", "554 5.1.1 x", "450 4.1.1 later",
                  "550 no code", "550 5.1.1.1", "5501 5.1.1"):  # fmt: skip
        assert not no_such_user(reply), reply


class UnreadableStore(MemoryStatusStore):
    """A store whose suppression list cannot be read or written (the rest works)."""

    def _suppressed(self, account: str, addresses: Any) -> dict[str, str]:
        raise StoreError("redis: connection refused")

    def _suppress(self, entry: Any) -> None:
        raise StoreError("redis: connection refused")


def test_an_unreadable_list_sends_to_everyone_and_logs_the_outage_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = utcnow()
    record = StatusRecord(
        "11111111-1111-4111-8111-111111111111", EmailStatus.SENDING, SENDER, (GONE, "a@x.net"),
        (GONE, "a@x.net"), now, now,
    )  # fmt: skip
    screen = SuppressionFilter(UnreadableStore(ttl=60), days=30)
    with caplog.at_level(logging.INFO, logger="mailservice.delivery.suppression"):
        for _ in range(3):
            assert screen.screen(record, SENDER) == record, "nobody left out, nothing failed"
            assert screen.lookup(SENDER, record.pending) == {}  # a dry run's read, the same
            screen.learn(SENDER, {GONE: UNKNOWN}, record.request_id)  # lost, not raised
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines  # one outage line for reading, one for writing
    assert "sending without the check" in lines[0] and "not recorded" in lines[1]


# -- the admin API -----------------------------------------------------------------------------


def test_the_admin_api_needs_the_admin_token(client: FlaskClient) -> None:
    for headers in ({}, {"Authorization": f"Bearer {API_KEY}"}, {"Authorization": "Bearer x"}):
        answers = [
            client.get("/admin/suppressions", headers=headers),
            client.post("/admin/suppressions", json={"sender": SENDER, "address": GONE},
                        headers=headers),
            client.delete("/admin/suppressions", query_string={"sender": SENDER, "address": GONE},
                          headers=headers),
        ]  # fmt: skip
        for answer in answers:
            assert answer.status_code == 401 and answer.mimetype == "application/problem+json"
            assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert entries(client) == [], "nothing was added"


def test_the_admin_api_is_closed_without_admin_token(
    make_app: Callable[..., Flask], sink: SmtpServer
) -> None:
    closed = make_app(sink.port).test_client()
    answer = closed.get("/admin/suppressions", headers={"Authorization": "Bearer "})
    assert answer.status_code == 401 and "not set" in answer.get_json()["detail"]


def test_the_operator_adds_lists_and_removes_entries(client: FlaskClient, sink: SmtpServer) -> None:
    added = client.post(
        "/admin/suppressions",
        json={"sender": SENDER.upper(), "address": "Manual@Example.NET", "reason": "asked to"},
        headers=ADMIN,
    )
    assert added.status_code == 201, added.get_json()
    entry = added.get_json()
    assert (entry["sender"], entry["address"], entry["reason"]) == (
        SENDER,
        "manual@example.net",
        "asked to",
    )
    assert entry["created_at"].endswith("Z") and entry["expires_at"] > entry["created_at"]
    default = client.post(
        "/admin/suppressions", json={"sender": SENDER, "address": "b@example.net"}, headers=ADMIN
    )
    assert default.get_json()["reason"] == "added by the operator"
    assert [e["address"] for e in entries(client, sender=SENDER)] == [
        "b@example.net",
        "manual@example.net",
    ]
    # Pages of one, walked with `next`.
    page = client.get("/admin/suppressions?limit=1", headers=ADMIN).get_json()
    assert [e["address"] for e in page["entries"]] == ["b@example.net"] and page["next"]
    rest = client.get(f"/admin/suppressions?limit=1&after={page['next']}", headers=ADMIN)
    assert [e["address"] for e in rest.get_json()["entries"]] == ["manual@example.net"]
    assert rest.get_json()["next"] is None

    # The operator's entry holds on the send path too.
    asked = len(sink.handler.asked)
    sent = send_to(client, "manual@example.net", "one@example.net")
    assert sent["refused"] == {"manual@example.net": "suppressed: asked to"}
    assert sink.handler.asked[asked:] == ["one@example.net"]

    query = {"sender": SENDER, "address": "MANUAL@example.net"}
    removed = client.delete("/admin/suppressions", query_string=query, headers=ADMIN)
    assert removed.status_code == 204 and removed.data == b""
    again = client.delete("/admin/suppressions", query_string=query, headers=ADMIN)
    assert again.status_code == 404 and again.mimetype == "application/problem+json"
    assert [e["address"] for e in entries(client)] == ["b@example.net"]
    send_to(client, "manual@example.net")
    assert sink.handler.asked[-1] == "manual@example.net", "asked again once removed"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"address": GONE}, "sender"),
        ({"sender": SENDER}, "address"),
        ({"sender": SENDER, "address": "not an address"}, "address"),
        ({"sender": SENDER, "address": GONE, "reason": 5}, "reason"),
        ({"sender": SENDER, "address": GONE, "reason": "x" * 501}, "reason"),
        ({"sender": SENDER, "address": GONE, "reason": "line\nbreak"}, "reason"),
        ({"sender": SENDER, "address": GONE, "until": "never"}, "until"),
    ],
)
def test_a_bad_body_is_400_naming_its_field(
    client: FlaskClient, body: dict[str, Any], field: str
) -> None:
    answer = client.post("/admin/suppressions", json=body, headers=ADMIN)
    assert answer.status_code == 400 and answer.mimetype == "application/problem+json"
    assert [e["field"] for e in answer.get_json()["errors"]] == [field]


def test_bad_queries_and_bodies_are_problems(client: FlaskClient) -> None:
    def status(method: str, **kw: Any) -> int:
        return client.open("/admin/suppressions", method=method, headers=ADMIN, **kw).status_code

    assert status("GET", query_string={"limit": "0"}) == 400
    assert status("GET", query_string={"limit": "many"}) == 400
    assert status("GET", query_string={"after": "%%%"}) == 400
    assert status("GET", query_string={"sender": ""}) == 400
    assert status("GET", query_string={"sender": "nobody@example.com"}) == 404
    assert status("POST", json={"sender": "nobody@example.com", "address": GONE}) == 404
    assert status("POST", data="[]", content_type="application/json") == 400
    assert status("POST", data="sender=x", content_type="text/plain") == 415
    assert status("DELETE", query_string={"sender": SENDER}) == 400
    assert status("DELETE", query_string={"sender": SENDER, "address": "x"}) == 400
    assert status("DELETE", query_string={"sender": "nobody@example.com", "address": GONE}) == 404


@pytest.mark.redis
def test_the_list_is_shared_by_processes_on_one_redis(
    make_app: Callable[..., Flask], sink: SmtpServer, redis_server: Any
) -> None:
    """Two apps on one Redis store, as two processes: one learns, the other skips."""
    first, second = (
        make_app(sink.port, admin_token=TOKEN, status_store_url=redis_server.url).test_client()
        for _ in range(2)
    )
    send_to(first, GONE, "one@example.net")
    asked = len(sink.handler.asked)
    skipped = send_to(second, GONE, "two@example.net")
    assert skipped["refused"] == {GONE: SUPPRESSED + UNKNOWN}
    assert sink.handler.asked[asked:] == ["two@example.net"]
    removed = second.delete(
        "/admin/suppressions", query_string={"sender": SENDER, "address": GONE}, headers=ADMIN
    )
    assert removed.status_code == 204
    assert entries(first) == []
