"""Attachments end to end (API.md section 3): POST /send-email with `attachments` to a real
aiosmtpd server, which parses what arrived; the 400s, the limits, and the content kept only
until the request is final."""

from __future__ import annotations

import base64
import os
import sqlite3
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from mail_server import EXTENSION
from mailservice.delivery.message_spec import MessageSpec
from mailservice.testing.smtp_servers import SmtpServer
from tests.conftest import send, wait_final, wait_for

# A small PDF-like file holding every byte value, and one of 100 KB of random bytes.
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + bytes(range(256)) * 3 + b"\ntrailer\n%%EOF\n"
RANDOM = os.urandom(100 * 1024)
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01" + bytes(range(200, 256))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def attachment(
    data: bytes = PDF, filename: str = "invoice.pdf", content_type: str = "application/pdf", **extra
) -> dict[str, Any]:
    return {"filename": filename, "content": b64(data), "content_type": content_type, **extra}


def message(**fields: Any) -> dict[str, Any]:
    return {
        "recipient": "user@example.com",
        "subject": "Your invoice",
        "body": "Attached.",
        **fields,
    }


def delivered(client, smtp_server: SmtpServer, body: dict[str, Any]) -> EmailMessage:
    """Send, wait until sent, and the message as the server parsed it."""
    response = send(client, body)
    assert response.status_code == 202, response.get_json()
    assert wait_final(client, response.get_json()["request_id"])["status"] == "sent"
    [received] = smtp_server.received
    return received.message


def structure(part: EmailMessage) -> object:
    if part.is_multipart():
        return (part.get_content_type(), [structure(p) for p in part.iter_parts()])
    return part.get_content_type()


# -- what arrives ------------------------------------------------------------------------------


def test_attachment_bytes_arrive_identical_after_decoding(client, smtp_server):
    msg = delivered(
        client,
        smtp_server,
        message(
            attachments=[
                attachment(PDF),
                attachment(RANDOM, "random.bin", "application/octet-stream"),
            ]
        ),
    )
    assert structure(msg) == (
        "multipart/mixed",
        ["text/plain", "application/pdf", "application/octet-stream"],
    )
    pdf, blob = msg.iter_attachments()
    assert (pdf.get_filename(), pdf.get_content_disposition()) == ("invoice.pdf", "attachment")
    assert pdf.get_content() == PDF
    assert blob.get_filename() == "random.bin"
    assert blob.get_content() == RANDOM
    assert msg.get_body(("plain",)).get_content().strip() == "Attached."


def test_an_inline_image_is_related_to_the_html_that_shows_it_by_cid(client, smtp_server):
    html = '<p>Thanks for your order</p><img src="cid:logo" alt="Acme">'
    msg = delivered(
        client,
        smtp_server,
        message(
            body=None,
            html=html,
            attachments=[attachment(PNG, "logo.png", "image/png", content_id="logo")],
        ),
    )
    # The text rendered from the HTML still comes first; the HTML and its image are related.
    assert structure(msg) == (
        "multipart/alternative",
        ["text/plain", ("multipart/related", ["text/html", "image/png"])],
    )
    text, related = msg.iter_parts()
    assert "Thanks for your order" in text.get_content()
    html_part, image = related.iter_parts()
    assert 'src="cid:logo"' in html_part.get_content()
    assert image["Content-ID"] == "<logo>"
    assert image.get_content_disposition() == "inline"
    assert image.get_filename() == "logo.png"
    assert image.get_content() == PNG


def test_both_kinds_make_mixed_around_alternative_text_and_related_html(client, smtp_server):
    msg = delivered(
        client,
        smtp_server,
        message(
            body=None,
            text="Your invoice is attached.",
            html='<img src="cid:logo@acme.example"><p>Your invoice is attached.</p>',
            attachments=[
                attachment(PDF),
                attachment(PNG, "logo.png", "image/png", content_id="logo@acme.example"),
            ],
        ),
    )
    assert structure(msg) == (
        "multipart/mixed",
        [
            (
                "multipart/alternative",
                ["text/plain", ("multipart/related", ["text/html", "image/png"])],
            ),
            "application/pdf",
        ],
    )
    [pdf] = msg.iter_attachments()
    assert pdf.get_content() == PDF


@pytest.mark.parametrize("filename", ["Rechnung März 2026.pdf", "請求書.pdf"])
def test_a_non_ascii_filename_arrives_rfc_2231_encoded_and_decodes_to_itself(
    client, smtp_server, filename
):
    delivered(client, smtp_server, message(attachments=[attachment(filename=filename)]))
    raw = smtp_server.received[0].content
    [part_head] = [h for h in raw.split(b"\r\n\r\n") if b"Content-Disposition" in h]
    assert b"filename*=utf-8''" in part_head
    assert b"=?" not in part_head
    [pdf] = smtp_server.received[0].message.iter_attachments()
    assert pdf.get_filename() == filename
    assert pdf.get_content() == PDF


def test_a_message_with_attachments_is_sent_7bit(client, smtp_server):
    delivered(client, smtp_server, message(attachments=[attachment(RANDOM, "r.bin")]))
    [received] = smtp_server.received
    assert received.content.isascii()
    assert not any(option.upper().startswith("BODY=") for option in received.mail_options)


# -- refused -----------------------------------------------------------------------------------

HTML = {"body": None, "html": '<img src="cid:logo">'}
BAD = [
    ({"content": "not base64!"}, "content"),
    ({"content": b64(PDF)[:40] + "\n" + b64(PDF)[40:]}, "content"),  # a wrapped line
    ({"content": "JVBERi0"}, "content"),  # padding missing
    ({"content": "-_-_"}, "content"),  # base64url is another alphabet
    ({"content": "Zm9v YmFy"}, "content"),
    ({"content": 12}, "content"),
    ({"filename": ""}, "filename"),
    ({"filename": "a" * 252 + ".pdf"}, "filename"),
    ({"filename": "../../etc/passwd"}, "filename"),
    ({"filename": "C:\\Users\\invoice.pdf"}, "filename"),
    ({"filename": "invoice.pdf\r\nX-Injected: yes"}, "filename"),
    ({"filename": "invoice\n.pdf"}, "filename"),
    ({"filename": "invoice\0.pdf"}, "filename"),
    ({"filename": "invoice\t.pdf"}, "filename"),
    ({"filename": "invoice\u202efdp.exe"}, "filename"),  # right-to-left override
    ({"filename": "=?utf-8?q?evil?=.pdf"}, "filename"),
    ({"filename": ".."}, "filename"),
    ({"filename": 7}, "filename"),
    ({"content_type": "pdf"}, "content_type"),
    ({"content_type": "application/"}, "content_type"),
    ({"content_type": "application/pdf; name=x.pdf"}, "content_type"),
    ({"content_type": "application/pdf\r\nBcc: x@example.com"}, "content_type"),
    ({"content_type": "application/p df"}, "content_type"),
    ({"content_type": "multipart/mixed"}, "content_type"),
    ({"content_type": "message/rfc822"}, "content_type"),
    ({"content_id": "my logo", **HTML}, "content_id"),
    ({"content_id": "<logo>", **HTML}, "content_id"),
    ({"content_id": "logo;x", **HTML}, "content_id"),
    ({"content_id": "", **HTML}, "content_id"),
    ({"content_id": "a" * 256, **HTML}, "content_id"),
    ({"content_id": "logo"}, "content_id"),  # no HTML body to show it
    ({"size": 3}, "size"),
]


def bad_body(fields: dict[str, Any]) -> dict[str, Any]:
    """A message whose second attachment has `fields` (a None value: the member left out);
    members that are not an attachment's go into the message."""
    members = {"filename", "content", "content_type", "content_id", "size"}
    item = attachment(**{k: v for k, v in fields.items() if k in members - {"content"}})
    if "content" in fields:
        item["content"] = fields["content"]
    top = {k: v for k, v in fields.items() if k not in members}
    return message(attachments=[attachment(filename="ok.pdf"), item], **top)


@pytest.mark.parametrize(
    ("fields", "member"), BAD, ids=[f"{m}-{i}" for i, (_, m) in enumerate(BAD)]
)
def test_a_bad_attachment_is_400_naming_it_by_index(client, fields, member):
    response = send(client, bad_body(fields))
    assert response.status_code == 400
    problem = response.get_json()
    assert [e["field"] for e in problem["errors"]] == [f"attachments.1.{member}"]


def test_bad_attachments_reach_no_smtp_server(client, smtp_server):
    for fields, _ in BAD:
        assert send(client, bad_body(fields)).status_code == 400
    for body in (
        message(attachments="invoice.pdf"),
        message(attachments=[attachment(), "invoice.pdf"]),
        message(attachments=[attachment(content_id="a"), attachment(content_id="a")], **HTML),
    ):
        assert send(client, body).status_code == 400
    # One good request after them all: when it has arrived, nothing before it was sent.
    delivered(client, smtp_server, message(attachments=[attachment()]))
    assert len(smtp_server.received) == 1


def test_other_malformed_attachments_are_400_naming_the_place(client):
    nameless = {"content": b64(PDF), "content_type": "application/pdf"}
    cases = [
        (message(attachments="invoice.pdf"), "attachments"),
        (message(attachments=[attachment(), "invoice.pdf"]), "attachments.1"),
        (message(attachments=[nameless]), "attachments.0.filename"),
    ]
    for body, field in cases:
        response = send(client, body)
        assert response.status_code == 400
        assert field in [e["field"] for e in response.get_json()["errors"]]
        assert "AttachmentField" not in response.get_data(as_text=True)


def test_each_content_id_is_unique_and_the_repeat_is_named(client):
    logo = attachment(PNG, "logo.png", "image/png", content_id="logo")
    response = send(client, message(attachments=[attachment(), logo, logo], **HTML))
    assert response.status_code == 400
    [error] = response.get_json()["errors"]
    assert error["field"] == "attachments.2.content_id"
    assert "attachments.1" in error["message"]


def test_no_error_echoes_the_content(client):
    response = send(client, bad_body({"content": "c2VjcmV0IGNvbnRlbnQ"}))  # padding missing
    assert response.status_code == 400
    assert b"c2VjcmV0" not in response.data


# -- limits ------------------------------------------------------------------------------------


def test_max_attachments_is_honoured(make_app, smtp_server):
    client = make_app(smtp_server.port, max_attachments=2).test_client()
    response = send(client, message(attachments=[attachment()] * 3))
    assert response.status_code == 400
    [error] = response.get_json()["errors"]
    assert error["field"] == "attachments"
    assert "3 attachments; the limit is 2" in error["message"]
    assert send(client, message(attachments=[attachment()] * 2)).status_code == 202


def test_max_attachments_0_refuses_every_attachment_but_not_mail_without(make_app, smtp_server):
    client = make_app(smtp_server.port, max_attachments=0).test_client()
    assert send(client, message(attachments=[attachment()])).status_code == 400
    assert send(client, message(attachments=[])).status_code == 202
    assert send(client, message()).status_code == 202


def test_max_attachment_bytes_counts_decoded_bytes_of_all_together(make_app, smtp_server):
    client = make_app(smtp_server.port, max_attachment_bytes=1000).test_client()
    # 1000 bytes decoded are 1336 characters of base64: the decoded size is what counts.
    exact = [attachment(b"x" * 600), attachment(b"y" * 400)]
    assert send(client, message(attachments=exact)).status_code == 202
    over = [attachment(b"x" * 600), attachment(b"y" * 401), attachment(b"z")]
    response = send(client, message(attachments=over))
    assert response.status_code == 400
    [error] = response.get_json()["errors"]
    assert error["field"] == "attachments.1.content"
    assert "1001 bytes" in error["message"] and "MAX_ATTACHMENT_BYTES" in error["message"]


# -- the content is kept only until final ------------------------------------------------------

SECRET = b"confidential payroll figures 4711"


def test_a_status_never_returns_an_attachments_content(client, smtp_server):
    body = message(attachments=[attachment(SECRET, "payroll.pdf")])
    response = send(client, body)
    request_id = response.get_json()["request_id"]
    final = wait_final(client, request_id)
    assert final["status"] == "sent"
    raw = client.get(f"/email-status/{request_id}").data
    for secret in (SECRET, b64(SECRET).encode(), b"payroll.pdf"):
        assert secret not in raw


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'status.db'}"
    return request.getfixturevalue("redis_server").url


def test_the_store_keeps_the_attachments_until_final_and_drops_them_after(
    make_app, smtp_server, store_url, tmp_path
):
    app = make_app(smtp_server.port, status_store_url=store_url, retry_backoff=1.0)
    client = app.test_client()
    store = app.extensions[EXTENSION].store
    smtp_server.handler.script("DATA", "451 4.3.0 try later")  # the first attempt fails
    response = send(client, message(attachments=[attachment(SECRET, "payroll.pdf")]))
    request_id = response.get_json()["request_id"]
    wait_for(lambda: client.get(f"/email-status/{request_id}").get_json()["status"] == "retrying")
    payload = store.payload(request_id)
    assert payload is not None
    assert MessageSpec.from_json(payload).attachments[0].content == SECRET
    if store_url.startswith("sqlite"):  # on disk, where another process would find it
        with sqlite3.connect(tmp_path / "status.db") as db:
            [(row,)] = db.execute("SELECT payload FROM requests WHERE request_id = ?", [request_id])
        assert b64(SECRET) in row
    assert wait_final(client, request_id)["status"] == "sent"
    assert store.payload(request_id) is None
    if store_url.startswith("sqlite"):
        with sqlite3.connect(tmp_path / "status.db") as db:
            [(row,)] = db.execute("SELECT payload FROM requests WHERE request_id = ?", [request_id])
        assert row is None
    [received] = smtp_server.received
    [pdf] = received.message.iter_attachments()
    assert pdf.get_content() == SECRET
