"""The bytes on the wire, checked at a real SMTP server: headers, bodies, AUTH, TLS, reuse."""

from __future__ import annotations

import re
import ssl
import subprocess
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest

from mail_server import EXTENSION
from mailservice.delivery.smtp_client import SmtpTarget
from mailservice.testing.smtp_servers import Received, SmtpServer
from tests.conftest import SENDER, send, wait_final, wait_for

PASSWORD = "app-pw-Zq81!x"


def deliver(client, server: SmtpServer, **fields: Any) -> tuple[dict[str, Any], Received]:
    """Send one message with these fields; its final status and what the server got."""
    body = {"recipient": "user@example.com", "subject": "Hi", **fields}
    if not {"text", "html"} & fields.keys():
        body.setdefault("body", "Hello")
    response = send(client, body)
    assert response.status_code == 202, response.get_json()
    status = wait_final(client, response.get_json()["request_id"])
    assert status["status"] == "sent", status
    [received] = server.received
    return status, received


def raw_headers(received: Received) -> dict[str, bytes]:
    """Header name -> raw (unfolded) value as it was on the wire."""
    head = received.content.split(b"\r\n\r\n", 1)[0]
    unfolded = re.sub(rb"\r\n[ \t]", b" ", head)
    headers: dict[str, bytes] = {}
    for line in unfolded.split(b"\r\n"):
        name, _, value = line.partition(b":")
        headers[name.decode("ascii").lower()] = value.strip()
    return headers


def final_status(client, response) -> dict[str, Any]:
    assert response.status_code == 202, response.get_json()
    return wait_final(client, response.get_json()["request_id"])


@pytest.fixture
def server_tls(tls_files: tuple[Path, Path]) -> ssl.SSLContext:
    cert, key = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


# -- headers ---------------------------------------------------------------------------------


def test_from_has_the_senders_display_name(client, smtp_server):
    _, received = deliver(client, smtp_server)
    assert received.message["From"] == f"Test Sender <{SENDER}>"
    assert received.mail_from == SENDER


def test_non_ascii_display_name_is_rfc2047_encoded(client, smtp_server):
    _, received = deliver(client, smtp_server, from_name="Zoë Ünal und Café")
    raw = raw_headers(received)["from"]
    assert raw.isascii()
    assert b"=?utf-8?" in raw.lower()
    [address] = received.message["From"].addresses
    assert address.display_name == "Zoë Ünal und Café"
    assert address.addr_spec == SENDER


def test_display_name_with_specials_is_quoted_not_parsed(client, smtp_server):
    # Specials that a display name may hold (@ < > are refused: they impersonate an address).
    _, received = deliver(client, smtp_server, from_name='Boss, "CEO" (Finance); x')
    [address] = received.message["From"].addresses
    assert address.addr_spec == SENDER
    assert address.display_name == 'Boss, "CEO" (Finance); x'


def test_to_and_cc_are_headers_and_bcc_only_in_the_envelope(client, smtp_server):
    _, received = deliver(
        client,
        smtp_server,
        recipient=["to1@example.com", "to2@example.com"],
        cc=["cc@example.com"],
        bcc=["hidden@example.com"],
    )
    message = received.message
    assert [a.addr_spec for a in message["To"].addresses] == ["to1@example.com", "to2@example.com"]
    assert [a.addr_spec for a in message["Cc"].addresses] == ["cc@example.com"]
    assert message["Bcc"] is None
    assert b"hidden@example.com" not in received.content
    assert received.rcpt_tos == [
        "to1@example.com",
        "to2@example.com",
        "cc@example.com",
        "hidden@example.com",
    ]


def test_no_cc_header_without_cc(client, smtp_server):
    _, received = deliver(client, smtp_server)
    assert received.message["Cc"] is None


@pytest.mark.parametrize(
    "subject",
    [
        "Grüße aus Köln, 日本語 ✓",
        "Ünïcödé " * 60,
        "😀 emoji first",
        "plain ascii subject with =? and ?= apart",
    ],
    ids=["mixed", "long_folded", "emoji", "ascii_near_encoded_word"],
)
def test_subject_is_encoded_as_rfc2047_and_decodes_to_the_original(client, smtp_server, subject):
    _, received = deliver(client, smtp_server, subject=subject)
    raw = raw_headers(received)["subject"]
    assert raw.isascii()
    if not subject.isascii():
        assert b"=?utf-8?" in raw.lower()
    assert received.message["Subject"] == subject


def test_date_header_is_the_acceptance_time(client, smtp_server):
    before = datetime.now(UTC).replace(microsecond=0)
    status, received = deliver(client, smtp_server)
    after = datetime.now(UTC)
    date = parsedate_to_datetime(received.message["Date"])
    created = datetime.fromisoformat(status["created_at"].replace("Z", "+00:00"))
    assert date.tzinfo is not None
    # The acceptance time to the second (a Date header has no fractions), and a time taken
    # during this request by the wall clock: an order, not a time-out.
    assert date == created.replace(microsecond=0)
    assert before <= date <= after


def test_message_id_is_request_id_at_sender_domain(client, smtp_server):
    status, received = deliver(client, smtp_server)
    assert received.message["Message-ID"] == f"<{status['request_id']}@example.com>"


def test_reply_to_header(client, smtp_server):
    _, received = deliver(client, smtp_server, reply_to="replies@example.net")
    assert received.message["Reply-To"] == "replies@example.net"


def test_extra_headers_arrive(client, smtp_server):
    headers = {
        "X-Campaign": "spring-2026",
        "X-Greeting": "Grüße",
        "list-unsubscribe": "<mailto:unsub@example.com>",
    }
    _, received = deliver(client, smtp_server, headers=headers)
    message = received.message
    assert message["X-Campaign"] == "spring-2026"
    assert message["X-Greeting"] == "Grüße"
    assert raw_headers(received)["x-greeting"].isascii()
    assert message["List-Unsubscribe"] == "<mailto:unsub@example.com>"
    assert b"List-Unsubscribe:" in received.content


def test_a_long_list_unsubscribe_url_arrives_as_itself_not_as_encoded_words(client, smtp_server):
    # RFC 8058 one-click: the receiver reads the URL from the header; an encoded word is none.
    url = "<https://example.com/unsubscribe?list=news&token=" + "Zq81x9Kp" * 16 + ">"
    value = f"{url}, <mailto:unsubscribe@example.com?subject=unsubscribe>"
    headers = {"List-Unsubscribe": value, "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    _, received = deliver(client, smtp_server, headers=headers)
    assert raw_headers(received)["list-unsubscribe"] == value.encode()
    assert b"=?" not in received.content.split(b"\r\n\r\n", 1)[0]
    assert received.message["List-Unsubscribe"] == value
    assert received.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_every_header_is_present_once(client, smtp_server):
    _, received = deliver(client, smtp_server, reply_to="r@example.com", cc=["c@example.com"])
    names = [name.lower() for name in received.message]
    for name in ("from", "to", "cc", "subject", "date", "message-id", "reply-to"):
        assert names.count(name) == 1, name


# -- bodies ----------------------------------------------------------------------------------


def body_text(part) -> str:
    return part.get_content().replace("\r\n", "\n")


def test_plain_body_is_text_plain(client, smtp_server):
    _, received = deliver(client, smtp_server, body="Hello,\nplain world ✓")
    message = received.message
    assert message.get_content_type() == "text/plain"
    assert body_text(message).rstrip("\n") == "Hello,\nplain world ✓"


def test_is_html_body_is_text_html_with_a_text_alternative(client, smtp_server):
    html = "<h1>Hello!</h1> Thanks for <a href='https://example.com/j'>joining</a> us."
    _, received = deliver(client, smtp_server, body=html, is_html=True)
    message = received.message
    assert message.get_content_type() == "multipart/alternative"
    text, rich = message.iter_parts()
    assert [text.get_content_type(), rich.get_content_type()] == ["text/plain", "text/html"]
    assert body_text(rich).rstrip("\n") == html
    assert " ".join(body_text(text).split()) == (
        "Hello! Thanks for [joining](https://example.com/j) us."
    )


def test_text_alternative_false_sends_html_alone(client, smtp_server):
    html = "<h1>Hello!</h1> Thanks for joining us."
    _, received = deliver(client, smtp_server, body=html, is_html=True, text_alternative=False)
    assert received.message.get_content_type() == "text/html"
    assert body_text(received.message).rstrip("\n") == html


def test_text_and_html_make_multipart_alternative(client, smtp_server):
    _, received = deliver(client, smtp_server, text="plain version", html="<p>html version</p>")
    message = received.message
    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert body_text(parts[0]).rstrip("\n") == "plain version"
    assert body_text(parts[1]).rstrip("\n") == "<p>html version</p>"


def test_html_alone_gets_a_text_alternative(client, smtp_server):
    _, received = deliver(client, smtp_server, html="<p>only html</p>")
    message = received.message
    assert message.get_content_type() == "multipart/alternative"
    assert [body_text(p).strip() for p in message.iter_parts()] == [
        "only html",
        "<p>only html</p>",
    ]
    no_text = {"html": "<p>only html</p>", "text_alternative": False}
    response = send(client, {"recipient": "user@example.com", "subject": "Hi", **no_text})
    assert wait_final(client, response.get_json()["request_id"])["status"] == "sent"
    assert smtp_server.received[1].message.get_content_type() == "text/html"


def test_text_alone_is_text_plain(client, smtp_server):
    _, received = deliver(client, smtp_server, text="only text")
    assert received.message.get_content_type() == "text/plain"


@pytest.mark.parametrize("eight_bit_mime", [True, False], ids=["8bitmime", "7bit_only"])
@pytest.mark.parametrize(
    "fields",
    [
        {"body": "Grüße aus Köln ✓\nzweite Zeile"},
        {"body": "<p>Grüße ✓</p>", "is_html": True, "text_alternative": False},
        {"text": "Grüße ✓", "html": "<p>Grüße ✓</p>"},
    ],
    ids=["plain", "html", "alternative"],
)
def test_a_non_ascii_body_arrives_7bit_safe_at_any_server(
    make_app, start_smtp, eight_bit_mime, fields
):
    # RFC 6152: no 8-bit byte without BODY=8BITMIME; built 7-bit safe, none is ever needed.
    server = start_smtp(eight_bit_mime=eight_bit_mime)
    client = make_app(server.port).test_client()
    _, received = deliver(client, server, **fields)
    assert received.content.isascii()
    assert "BODY=8BITMIME" not in received.mail_options
    parts = [p for p in received.message.walk() if not p.is_multipart()]
    assert {p["Content-Transfer-Encoding"] for p in parts} <= {"quoted-printable", "base64"}
    sent = [fields["body"]] if "body" in fields else [fields["text"], fields["html"]]
    assert [body_text(p).rstrip("\n") for p in parts] == sent


def test_an_smtputf8_message_declares_body_8bitmime_with_its_8bit_body(make_app, start_smtp):
    server = start_smtp(smtputf8=True)
    client = make_app(server.port).test_client()
    _, received = deliver(client, server, recipient="jöe@example.com", body="Grüße ✓")
    assert {"SMTPUTF8", "BODY=8BITMIME"} <= set(received.mail_options)
    assert body_text(received.message).rstrip("\n") == "Grüße ✓"


def test_lines_end_in_crlf_on_the_wire(client, smtp_server):
    _, received = deliver(
        client, smtp_server, text="one\ntwo\r\nthree\rfour\n\nsix", html="<p>a</p>\n<p>b</p>"
    )
    content = received.content
    assert b"\r\n" in content
    assert re.search(rb"(?<!\r)\n", content) is None, "bare LF on the wire"
    assert re.search(rb"\r(?!\n)", content) is None, "bare CR on the wire"


def test_line_starting_with_dot_arrives_intact(client, smtp_server):
    text = ".hidden first line\n..two dots\n.\nafter a lone dot\nend"
    status, received = deliver(client, smtp_server, body=text)
    assert body_text(received.message).rstrip("\n") == text
    assert status["attempts"] == 1


def test_long_lines_are_encoded_to_at_most_998_octets(client, smtp_server):
    text = "x" * 5000 + "\n" + "é" * 3000 + "\n" + "word " * 1000
    _, received = deliver(client, smtp_server, body=text)
    for line in received.content.split(b"\r\n"):
        assert len(line) <= 998
    assert body_text(received.message).rstrip("\n") == text


def test_longest_subject_is_folded_to_at_most_998_octets(client, smtp_server):
    subject = "s" * 998
    _, received = deliver(client, smtp_server, subject=subject)
    for line in received.content.split(b"\r\n"):
        assert len(line) <= 998
    assert received.message["Subject"] == subject


def test_long_header_values_are_folded_to_at_most_998_octets(client, smtp_server):
    headers = {"X-Long": "h" * 998, "X-Long-Words": "wörd " * 190}
    _, received = deliver(client, smtp_server, headers=headers, from_name="N" * 200)
    for line in received.content.split(b"\r\n"):
        assert len(line) <= 998
    assert received.message["X-Long"] == "h" * 998
    assert received.message["X-Long-Words"] == "wörd " * 190
    assert received.message["From"].addresses[0].display_name == "N" * 200


# -- addresses -------------------------------------------------------------------------------


def test_international_domain_is_sent_as_punycode(client, smtp_server):
    _, received = deliver(client, smtp_server, recipient="user@bücher.example")
    assert received.rcpt_tos == ["user@xn--bcher-kva.example"]
    assert "SMTPUTF8" not in received.mail_options


def test_international_local_part_uses_smtputf8(make_app, start_smtp):
    server = start_smtp(smtputf8=True)
    client = make_app(server.port).test_client()
    _, received = deliver(client, server, recipient="用户@例子.广告")
    assert received.rcpt_tos == ["用户@例子.广告"]
    assert "SMTPUTF8" in received.mail_options
    # The header is raw UTF-8 (RFC 6532); the bytes parser would surrogate-escape it.
    assert "\r\nTo: 用户@例子.广告\r\n".encode() in received.content


def test_international_local_part_fails_without_smtputf8_support(client, smtp_server):
    status = final_status(
        client, send(client, {"recipient": "用户@例子.广告", "subject": "Hi", "body": "x"})
    )
    assert status["status"] == "failed"
    assert "SMTPUTF8" in status["error"]
    assert status["attempts"] == 1
    assert smtp_server.received == []


def test_international_reply_to_uses_smtputf8_not_an_encoded_word(make_app, start_smtp):
    server = start_smtp(smtputf8=True)
    client = make_app(server.port).test_client()
    _, received = deliver(client, server, reply_to="回复@example.com")
    assert "SMTPUTF8" in received.mail_options
    assert "\r\nReply-To: 回复@example.com\r\n".encode() in received.content
    assert b"=?" not in raw_headers(received)["reply-to"]


def test_international_reply_to_fails_without_smtputf8_support(client, smtp_server):
    body = {
        "recipient": "a@example.com",
        "subject": "Hi",
        "body": "x",
        "reply_to": "回复@example.com",
    }
    status = final_status(client, send(client, body))
    assert status["status"] == "failed"
    assert "SMTPUTF8" in status["error"]
    assert smtp_server.received == []


# -- AUTH and TLS ------------------------------------------------------------------------------


def test_login_with_the_senders_password(make_app, start_smtp):
    server = start_smtp(logins={SENDER: PASSWORD})
    client = make_app(server.port, password=PASSWORD).test_client()
    deliver(client, server)
    assert server.logins_seen == [SENDER]


def test_wrong_password_fails_with_535_and_is_not_retried(make_app, start_smtp):
    server = start_smtp(logins={SENDER: PASSWORD})
    client = make_app(server.port, password="wrong-password", max_attempts=3).test_client()
    status = final_status(client, send(client))
    assert status["status"] == "failed"
    assert "535" in status["error"]
    assert "wrong-password" not in status["error"]
    assert status["attempts"] == 1
    # smtplib may try a second AUTH mechanism on the same connection, but never reconnects.
    assert server.handler.connections == 1
    assert set(server.logins_seen) == {SENDER}
    assert server.handler.transactions == 0


def test_starttls_with_trusted_certificate_sends(make_app, start_smtp, server_tls, tls_files):
    server = start_smtp(tls_context=server_tls, require_starttls=True, logins={SENDER: PASSWORD})
    client = make_app(
        server.port, security="starttls", password=PASSWORD, smtp_ca_file=str(tls_files[0])
    ).test_client()
    deliver(client, server)
    assert server.logins_seen == [SENDER]


def test_smtp_ca_file_adds_to_the_system_cas_not_replaces_them(
    make_app, start_smtp, server_tls, tls_files, tmp_path, monkeypatch
):
    # The server's certificate stands for a public CA here (the system's trust store, which
    # OpenSSL reads from SSL_CERT_FILE); SMTP_CA_FILE names another, private CA.
    other = tmp_path / "private-ca.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(tmp_path / "private-ca.key"), "-out", str(other), "-subj", "/CN=ca",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files[0]))
    server = start_smtp(tls_context=server_tls, require_starttls=True, logins={SENDER: PASSWORD})
    client = make_app(
        server.port, security="starttls", password=PASSWORD, smtp_ca_file=str(other)
    ).test_client()
    deliver(client, server)
    assert server.logins_seen == [SENDER]


def test_starttls_with_untrusted_certificate_fails_before_login(make_app, start_smtp, server_tls):
    server = start_smtp(tls_context=server_tls, require_starttls=True, logins={SENDER: PASSWORD})
    client = make_app(server.port, security="starttls", password=PASSWORD).test_client()
    status = final_status(client, send(client))
    assert status["status"] == "failed"
    assert "certificate" in status["error"].lower()
    assert status["attempts"] == 1
    assert server.logins_seen == []
    assert server.received == []


def test_starttls_required_but_not_offered_fails_without_login(make_app, start_smtp):
    server = start_smtp(logins={SENDER: PASSWORD})
    client = make_app(server.port, security="starttls", password=PASSWORD).test_client()
    status = final_status(client, send(client))
    assert status["status"] == "failed"
    assert "STARTTLS" in status["error"]
    assert status["attempts"] == 1
    assert server.logins_seen == []
    assert server.received == []


def test_implicit_tls_with_trusted_certificate_sends(make_app, start_smtp, server_tls, tls_files):
    server = start_smtp(tls_context=server_tls, implicit_tls=True, logins={SENDER: PASSWORD})
    client = make_app(
        server.port, security="ssl", password=PASSWORD, smtp_ca_file=str(tls_files[0])
    ).test_client()
    deliver(client, server)
    assert server.logins_seen == [SENDER]


def test_implicit_tls_with_untrusted_certificate_fails(make_app, start_smtp, server_tls):
    server = start_smtp(tls_context=server_tls, implicit_tls=True)
    client = make_app(server.port, security="ssl").test_client()
    status = final_status(client, send(client))
    assert status["status"] == "failed"
    assert "certificate" in status["error"].lower()
    assert status["attempts"] == 1
    assert server.received == []


def test_smtp_target_repr_hides_the_password():
    target = SmtpTarget("127.0.0.1", 25, "none", SENDER, PASSWORD)
    assert PASSWORD not in repr(target)
    assert PASSWORD not in str(target)


# -- connections -------------------------------------------------------------------------------


def test_one_connection_is_reused_for_consecutive_messages(make_app, smtp_server):
    app = make_app(smtp_server.port, workers=1)
    client = app.test_client()
    ids = []
    for i in range(5):
        response = send(client, {"recipient": "user@example.com", "subject": f"n{i}", "body": "x"})
        ids.append(response.get_json()["request_id"])
    for request_id in ids:
        assert wait_final(client, request_id)["status"] == "sent"
    assert len(smtp_server.received) == 5
    assert smtp_server.handler.connections == 1
    assert app.extensions[EXTENSION].pool.smtp.sessions_opened == 1


def test_connection_closed_by_server_while_idle_is_reopened_transparently(make_app, start_smtp):
    server = start_smtp(idle_timeout=0.5)
    client = make_app(server.port, workers=1).test_client()
    first = final_status(client, send(client))
    assert first["status"] == "sent"
    # The server hangs up on the idle connection; the client only finds out on next use.
    wait_for(lambda: server.handler.disconnections >= 1, timeout=5)
    second = final_status(client, send(client))
    assert second["status"] == "sent"
    assert second["attempts"] == 1
    assert second["error"] is None
    assert len(server.received) == 2
    assert server.handler.connections == 2


def test_smtp_ehlo_name_is_the_name_the_server_hears(make_app, smtp_server):
    client = make_app(smtp_server.port, smtp_ehlo_name="relay-client.example.com").test_client()
    deliver(client, smtp_server)
    assert smtp_server.handler.ehlo_names == ["relay-client.example.com"]
