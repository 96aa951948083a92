"""The dashboard through Flask's test client: its door (ADMIN_TOKEN, the login, failed
authentications), escaping of every value it shows, its headers, pagination and search bounds,
a request's history and demo mode's outbox. tests/test_dashboard_browser.py drives it in a
real browser."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from mail_server import EXTENSION, create_app
from mailservice.config import Settings
from mailservice.demo import start_catcher
from mailservice.stores import listing, memory_store
from mailservice.testing.ports import free_port
from mailservice.testing.smtp_servers import SmtpServer
from tests.conftest import API_KEY, send, wait_final, wait_for, write_senders

TOKEN = "admin-token-for-tests-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
SCRIPT = "<script>alert('x')</script>"
ESCAPED = "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"


@pytest.fixture
def admin_app(make_app: Callable[..., Flask], smtp_server: SmtpServer) -> Flask:
    return make_app(smtp_server.port, admin_token=TOKEN)


@pytest.fixture
def admin(admin_app: Flask) -> FlaskClient:
    return admin_app.test_client()


def sent(client: FlaskClient, **fields: Any) -> str:
    """The id of a request sent with `fields` and finished."""
    body = {"recipient": "user@example.com", "subject": "Hi", **fields}
    if "html" not in body and "text" not in body:
        body["body"] = "Hello"
    answer = send(client, body)
    assert answer.status_code == 202, answer.get_json()
    request_id = answer.get_json()["request_id"]
    wait_final(client, request_id)
    return request_id


# -- the door ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/", "/dashboard", "/dashboard/data", f"/dashboard/requests/{uuid.uuid4()}"]
)
def test_without_admin_token_every_dashboard_page_is_401(client: FlaskClient, path: str) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer "},
        ADMIN,
        {"Authorization": f"Bearer {API_KEY}"},
    ):
        answer = client.get(path, headers=headers)
        assert answer.status_code == 401, (path, headers)
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert "ADMIN_TOKEN" in client.get(path).get_data(as_text=True)
    assert client.post("/login", data={"token": ""}).status_code == 401


def test_without_credentials_the_page_is_401_with_the_login_form_and_the_data_problem_json(
    admin: FlaskClient,
) -> None:
    page = admin.get("/")
    assert page.status_code == 401 and page.mimetype == "text/html"
    assert 'action="/login"' in page.get_data(as_text=True)
    data = admin.get("/dashboard/data")
    assert data.status_code == 401 and data.mimetype == "application/problem+json"
    assert admin.get("/", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 401, (
        "an API key is no operator's credential"
    )
    assert admin.get("/dashboard/data", headers=ADMIN).status_code == 200


@pytest.mark.parametrize(
    ("base_url", "secure"),
    [
        ("https://mail.example.com", True),
        ("http://mail.example.com", True),  # plain HTTP to a real name: still Secure
        ("http://127.0.0.1:5000", False),  # a Secure cookie would never come back here
        ("http://localhost:5000", False),
        ("http://[::1]:5000", False),
    ],
)
def test_login_sets_an_httponly_strict_cookie_secure_unless_plain_http_to_loopback(
    admin_app: Flask, base_url: str, secure: bool
) -> None:
    client = admin_app.test_client()
    answer = client.post("/login", data={"token": TOKEN}, base_url=base_url)
    assert answer.status_code == 303 and answer.headers["Location"] == "/dashboard"
    cookie = answer.headers["Set-Cookie"]
    assert cookie.startswith("mail_admin=") and TOKEN not in cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert ("; Secure" in cookie) is secure
    value = cookie.split(";")[0].split("=", 1)[1]
    other = admin_app.test_client()
    other.set_cookie("mail_admin", value)
    assert other.get("/dashboard").status_code == 200, "the cookie lets its holder in"
    assert other.get("/login").status_code == 303, "a logged-in operator goes on"
    out = other.post("/logout")
    assert out.status_code == 303 and "mail_admin=;" in out.headers["Set-Cookie"]


def test_a_wrong_token_is_401_and_counts_as_a_failed_authentication(
    make_app: Callable[..., Flask], smtp_server: SmtpServer
) -> None:
    client = make_app(smtp_server.port, admin_token=TOKEN, auth_fail_limit="3/minute").test_client()
    wrong = client.post("/login", data={"token": TOKEN + "x"})
    assert wrong.status_code == 401
    assert "That is not the admin token." in wrong.get_data(as_text=True)
    assert "Set-Cookie" not in wrong.headers
    assert (
        client.get("/dashboard/data", headers={"Authorization": "Bearer nope"}).status_code == 401
    )
    for _ in range(3):  # a browser without a session counts nothing
        assert client.get("/dashboard").status_code == 401
    assert client.post("/login", data={"token": "x" * 5000}).status_code == 401
    refused = client.post("/login", data={"token": TOKEN})
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert client.get("/dashboard", headers=ADMIN).status_code == 429
    assert send(client).status_code == 429, "the same count as every route's"


def test_login_and_logout_from_another_site_are_refused(admin: FlaskClient) -> None:
    for path in ("/login", "/logout"):
        for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"}):
            assert admin.post(path, data={"token": TOKEN}, headers=headers).status_code == 403
        assert (
            admin.post(path, data={"token": TOKEN}, headers={"Sec-Fetch-Site": "cross-site"})
        ).status_code == 403
    own = admin.post("/login", data={"token": TOKEN}, headers={"Origin": "http://localhost"})
    assert own.status_code == 303
    for path in ("/login", "/logout"):  # not a URL at all: refused, not a 500
        assert (
            admin.post(path, data={"token": TOKEN}, headers={"Origin": "http://[::1"}).status_code
            == 403
        )


def test_a_cursor_past_any_time_is_400_on_every_store(
    make_app: Callable[..., Flask], smtp_server: SmtpServer, tmp_path: Path
) -> None:
    for url in ("memory://", f"sqlite:///{tmp_path / 's.db'}"):
        client = make_app(smtp_server.port, admin_token=TOKEN, status_store_url=url).test_client()
        for cursor in ("999999999999999999_x", "9999999999999999999_x"):
            answer = client.get(f"/dashboard/data?before={cursor}", headers=ADMIN)
            assert answer.status_code == 400, (url, cursor, answer.get_data(as_text=True))


def test_every_dashboard_answer_has_a_strict_csp_and_no_sniffing(admin: FlaskClient) -> None:
    for path, headers in (
        ("/login", {}),
        ("/dashboard", ADMIN),
        ("/dashboard/data", ADMIN),
        ("/dashboard/static/dashboard.js", {}),
    ):
        answer = admin.get(path, headers=headers)
        assert answer.status_code == 200, path
        csp = answer.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp
        assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        answer.close()  # a static file is streamed from its open file
    page = admin.get("/dashboard", headers=ADMIN).get_data(as_text=True)
    assert re.findall(r"<script[^>]*>", page) == ['<script src="/dashboard/static/dashboard.js">']
    assert "style=" not in page and not re.search(r"<[^>]+\son\w+=", page), "no inline code"


# -- what it shows ----------------------------------------------------------------------------


def test_counts_rows_and_history_of_a_retried_request(
    admin: FlaskClient, smtp_server: SmtpServer
) -> None:
    smtp_server.handler.script("DATA", "451 4.3.0 try later")
    request_id = sent(admin, tags=["welcome"])
    state = admin.get("/dashboard/data", headers=ADMIN).get_json()
    assert state["counts"] == {
        "scheduled": 0, "queued": 0, "sending": 0, "retrying": 0,
        "sent": 1, "failed": 0, "expired": 0, "canceled": 0,
    }  # fmt: skip
    assert sum(minute["sent"] for minute in state["sends"]) == 1 and len(state["sends"]) == 60
    [row] = state["requests"]
    assert row["request_id"] == request_id and row["status"] == "sent"
    assert row["attempts"] == 2 and row["tags"] == ["welcome"]
    assert row["recipients"] == ["user@example.com"] and row["sender"] == "sender@example.com"
    page = admin.get(f"/dashboard/requests/{request_id}", headers=ADMIN).get_data(as_text=True)
    statuses = re.findall(r'class="status status-(\w+)"', page.split('id="history"')[1])
    assert statuses == ["queued", "sending", "retrying", "sending", "sent"]
    assert "451 4.3.0 try later" in page


def test_a_scheduled_request_is_counted_listed_and_shown_with_its_times(
    admin: FlaskClient,
) -> None:
    body = {"recipient": "user@example.com", "subject": "Hi", "body": "Hello",
            "send_at": "2099-01-01T00:00:00Z"}  # fmt: skip
    answer = send(admin, body)
    assert answer.status_code == 400, "more than MAX_SCHEDULE_DAYS ahead"
    later = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    body["send_at"] = later.isoformat()
    request_id = send(admin, body).get_json()["request_id"]
    state = admin.get("/dashboard/data", headers=ADMIN).get_json()
    assert state["counts"]["scheduled"] == 1 and state["counts"]["queued"] == 0
    [row] = state["requests"]
    assert (row["request_id"], row["status"]) == (request_id, "scheduled")
    index = admin.get("/dashboard", headers=ADMIN).get_data(as_text=True)
    assert 'class="status status-scheduled"' in index
    page = admin.get(f"/dashboard/requests/{request_id}", headers=ADMIN).get_data(as_text=True)
    assert later.isoformat().replace("+00:00", "Z") in page and "never" in page
    statuses = re.findall(r'class="status status-(\w+)"', page.split('id="history"')[1])
    assert statuses == ["scheduled"]


def test_a_request_page_for_an_unknown_or_malformed_id_is_404(admin: FlaskClient) -> None:
    for request_id in (str(uuid.uuid4()), "not-an-id"):
        answer = admin.get(f"/dashboard/requests/{request_id}", headers=ADMIN)
        assert answer.status_code == 404 and answer.mimetype == "text/html"


def test_every_value_is_escaped_on_the_page_and_never_markup(
    admin: FlaskClient, smtp_server: SmtpServer
) -> None:
    # Values a client or a remote server chooses: a metadata value (any text but controls), an
    # SMTP server's reply (the error shown in the list), and the search box's own text.
    smtp_server.handler.script("DATA", f"550 5.7.1 {SCRIPT}")
    request_id = sent(admin, metadata={"note": SCRIPT}, tags=["x-1"])
    pages = [
        admin.get("/dashboard", headers=ADMIN),
        admin.get(f"/dashboard/requests/{request_id}", headers=ADMIN),
        admin.get("/dashboard", query_string={"q": SCRIPT}, headers=ADMIN),
    ]
    for answer in pages:
        html = answer.get_data(as_text=True)
        assert "<script>alert" not in html
        assert ESCAPED in html
    assert "Search by a request id" in pages[2].get_data(as_text=True)
    data = admin.get("/dashboard/data", headers=ADMIN)
    assert data.mimetype == "application/json"  # shown by textContent, never as markup
    assert SCRIPT in data.get_json()["requests"][0]["error"]


def test_pages_of_the_recent_list_and_their_bounds(admin: FlaskClient) -> None:
    ids = [send(admin, {"recipient": f"u{i}@example.com", "subject": "s", "body": "b"})
           .get_json()["request_id"] for i in range(12)]  # fmt: skip
    seen: list[str] = []
    state = admin.get("/dashboard/data?limit=5", headers=ADMIN).get_json()
    while True:
        assert len(state["requests"]) <= 5
        seen += [row["request_id"] for row in state["requests"]]
        if state["next"] is None:
            break
        page = admin.get("/dashboard", query_string={"limit": 5, "before": state["next"]},
                         headers=ADMIN)  # fmt: skip
        assert page.status_code == 200
        state = admin.get(
            "/dashboard/data", query_string={"limit": 5, "before": state["next"]}, headers=ADMIN
        ).get_json()
    assert seen == list(reversed(ids))
    first = admin.get("/dashboard?limit=5", headers=ADMIN).get_data(as_text=True)
    assert 'id="older" href="/dashboard?before=' in first
    for bad in ({"limit": "0"}, {"limit": "101"}, {"limit": "ten"}, {"before": "junk"}):
        answer = admin.get("/dashboard/data", query_string=bad, headers=ADMIN)
        assert answer.status_code == 400 and answer.mimetype == "application/problem+json"
        assert admin.get("/dashboard", query_string=bad, headers=ADMIN).status_code == 400


def test_search_by_id_recipient_and_tag(admin: FlaskClient) -> None:
    first = sent(admin, recipient="ada@example.com", tags=["invoice"])
    second = sent(admin, recipient="bob@example.com", tags=["reset"])

    def found(q: str) -> list[str]:
        state = admin.get("/dashboard/data", query_string={"q": q}, headers=ADMIN).get_json()
        return [row["request_id"] for row in state["requests"]]

    assert found(second) == [second]
    assert found(second.upper()) == [second], "an id in any case"
    assert found(str(uuid.uuid4())) == []
    assert found("ADA@example.com") == [first]
    assert found("reset") == [second]
    assert found("") == [second, first]
    assert found("no such tag!") == []


def test_a_page_showing_a_search_refreshes_less_often(admin: FlaskClient) -> None:
    """A search that finds little walks the whole recent window at every refresh."""

    def poll_seconds(query: dict[str, str]) -> str:
        page = admin.get("/", query_string=query, headers=ADMIN).get_data(as_text=True)
        return re.search(r'data-poll-seconds="(\d+)"', page)[1]  # type: ignore[index]

    assert poll_seconds({}) == "3"
    assert poll_seconds({"q": str(uuid.uuid4())}) == "3", "an id is found at once"
    assert poll_seconds({"q": "reset"}) == poll_seconds({"q": "ada@example.com"}) == "15"


def test_search_covers_the_recent_window_while_an_id_is_found_beyond_it(
    admin: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory_store, "RECENT_WINDOW", 3)
    oldest = sent(admin, tags=["first"])
    for _ in range(3):
        sent(admin, tags=["later"])
    assert listing.RECENT_WINDOW == 10_000  # only the store under test is narrowed

    def found(q: str) -> list[str]:
        state = admin.get("/dashboard/data", query_string={"q": q}, headers=ADMIN).get_json()
        return [row["request_id"] for row in state["requests"]]

    assert found("first") == []
    assert len(found("later")) == 3 and len(found("")) == 3
    assert found(oldest) == [oldest]


# -- demo mode's outbox -----------------------------------------------------------------------


@pytest.fixture
def demo_client(tmp_path: Path) -> Any:
    """An app whose sender sends to a real demo catcher, with its outbox on the dashboard."""
    port, outbox = free_port(), tmp_path / "outbox"
    catcher = start_catcher("127.0.0.1", port, outbox)
    settings = Settings(
        senders_file=str(write_senders(tmp_path / "data.csv", port)),
        email_log=str(tmp_path / "email_log.txt"),
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_security="none",
        rate_limit="",
        workers=2,
        admin_token=TOKEN,
    )
    app = create_app(settings, outbox=outbox)
    yield app.test_client(), outbox
    app.extensions[EXTENSION].shutdown(0)
    catcher.stop()


def test_the_outbox_lists_messages_and_previews_html_in_a_sandbox(demo_client: Any) -> None:
    client, outbox = demo_client
    html = f'<p style="color: red">Hello</p>{SCRIPT}<img src="https://tracker.example/p.gif">'
    sent(client, subject=f"Subject {SCRIPT}", html=html, text="Hello in text")
    wait_for(lambda: list(outbox.glob("*.eml")))
    listed = client.get("/dashboard/outbox", headers=ADMIN).get_data(as_text=True)
    assert f"Subject {ESCAPED}" in listed and "<script>" not in listed
    name = re.search(r'href="/dashboard/outbox/([^"]+)"', listed)[1]  # type: ignore[index]
    answer = client.get(f"/dashboard/outbox/{name}", headers=ADMIN)
    page = answer.get_data(as_text=True)
    frame = re.search(r"<iframe[^>]*>", page)[0]  # type: ignore[index]
    assert " sandbox " in frame and "allow-" not in frame
    assert 'srcdoc="&lt;p style=&#34;color: red&#34;&gt;Hello&lt;/p&gt;&lt;script&gt;' in frame
    assert "<script>" not in page and "Hello in text" in page
    csp = answer.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "img-src 'self' data:" in csp, "no remote images"
    for bad in (
        "../data.csv",
        "20261122T040125405251Z-000001.txt",
        "x.eml",
        "20260230T000000000000Z-000000.eml",  # the name's pattern, but no such date
    ):
        assert client.get(f"/dashboard/outbox/{bad}", headers=ADMIN).status_code == 404


def test_without_demo_mode_there_is_no_outbox(admin: FlaskClient) -> None:
    assert admin.get("/dashboard/outbox", headers=ADMIN).status_code == 404
    assert 'href="/dashboard/outbox"' not in admin.get("/", headers=ADMIN).get_data(as_text=True)
