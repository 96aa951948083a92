"""Issue 12's content features used together, as apps send them: a template with an inline
logo and an invoice, tags and metadata on it, all inside one batch, each message checked at a
real aiosmtpd server after parsing what arrived."""

from __future__ import annotations

import base64
import random

from tests.conftest import API_KEY, wait_final, wait_for

LOGO = random.Random(1).randbytes(2_000)
INVOICE = random.Random(2).randbytes(30_000)


def templated(recipient: str, **extra: object) -> dict[str, object]:
    return {
        "recipient": recipient,
        "template": "verify-email",
        "variables": {
            "app_name": "Acme",
            "name": "<Ada>",
            "code": "482913",
            "link": "https://a.example/v",
        },
        **extra,
    }


def test_a_batch_of_templated_messages_with_attachments_tags_and_metadata(client, smtp_server):
    with_files = templated(
        "ada@example.com",
        attachments=[
            {
                "filename": "invoice.pdf",
                "content_type": "application/pdf",
                "content": base64.b64encode(INVOICE).decode(),
            }
        ],
        tags=["invoice"],
        metadata={"order_id": "ord_1"},
    )
    bad = templated("bob@example.com", variables={"app_name": "Acme"})  # link and code missing
    plain = {"recipient": "cy@example.com", "subject": "Plain", "text": "hello", "tags": ["plain"]}
    answer = client.post(
        "/send-email/batch",
        json={"messages": [with_files, bad, plain]},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert answer.status_code == 207
    first, refused, third = answer.get_json()["messages"]
    assert refused["status"] == 400
    assert {e["field"] for e in refused["errors"]} & {"variables.code", "variables.link"}
    status = wait_final(client, first["request_id"])
    assert status["status"] == "sent"
    assert (status["tags"], status["metadata"]) == (["invoice"], {"order_id": "ord_1"})
    assert wait_final(client, third["request_id"])["tags"] == ["plain"]
    wait_for(lambda: len(smtp_server.received) == 2)
    by_recipient = {r.rcpt_tos[0]: r.message for r in smtp_server.received}
    assert set(by_recipient) == {"ada@example.com", "cy@example.com"}, "the bad one never left"
    invoice_mail = by_recipient["ada@example.com"]
    assert invoice_mail["Subject"] == "Confirm your email address for Acme"
    assert invoice_mail.get_content_type() == "multipart/mixed"
    (attachment,) = list(invoice_mail.iter_attachments())
    assert attachment.get_filename() == "invoice.pdf"
    assert attachment.get_content() == INVOICE
    html = invoice_mail.get_body(("html",))
    assert html is not None and "&lt;Ada&gt;" in html.get_content()  # autoescaped
    raw = b"".join(r.content for r in smtp_server.received)
    assert b"ord_1" not in raw and b'invoice"' not in raw, "tags and metadata stay out of mail"


def test_a_deployment_template_shows_an_inline_logo_by_content_id(make_app, smtp_server, tmp_path):
    folder = tmp_path / "templates" / "receipt"
    folder.mkdir(parents=True)
    (folder / "subject.txt").write_text("Receipt {{ number }}\n", encoding="utf-8")
    (folder / "body.html").write_text(
        '<img src="cid:logo" alt="Acme"><p>Receipt {{ number }}</p>\n', encoding="utf-8"
    )
    app = make_app(smtp_server.port, templates_dir=str(tmp_path / "templates"))
    client = app.test_client()
    answer = client.post(
        "/send-email",
        json={
            "recipient": "ada@example.com",
            "template": "receipt",
            "variables": {"number": "R-7"},
            "attachments": [
                {
                    "filename": "logo.png",
                    "content_type": "image/png",
                    "content": base64.b64encode(LOGO).decode(),
                    "content_id": "logo",
                }
            ],
        },
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert answer.status_code == 202, answer.get_json()
    assert wait_final(client, answer.get_json()["request_id"])["status"] == "sent"
    message = smtp_server.received[0].message
    assert message["Subject"] == "Receipt R-7"
    related = next(p for p in message.walk() if p.get_content_type() == "multipart/related")
    html, logo = related.iter_parts()
    assert 'src="cid:logo"' in html.get_content()
    assert logo["Content-ID"] == "<logo>" and logo.get_content() == LOGO
