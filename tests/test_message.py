"""build_message() on its own: the headers, the MIME structure and the bytes of one message.

It is given a MessageSpec directly, with no HTTP request and no SMTP server;
tests/test_mailer.py checks the same message as a real server receives it.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import parsedate_to_datetime

import pytest

from mailservice.delivery.message import CachedHeaderRegistry, build_message, wire_bytes
from mailservice.delivery.message_spec import Attachment, MessageSpec
from mailservice.senders import Sender

SENDER = Sender("sender@example.com", "pw", "127.0.0.1", 25, "none", "Test Sender")
REQUEST_ID = "6f1c2b9e-0d4a-4c3e-9a57-2f8b1d7e4c10"
DATE = datetime(2026, 3, 14, 15, 9, 26, tzinfo=UTC)
SPEC = MessageSpec(recipient=("user@example.com",), subject="Hi", body="Hello")


def build(sender: Sender = SENDER, **fields: object) -> EmailMessage:
    return build_message(dataclasses.replace(SPEC, **fields), sender, REQUEST_ID, DATE)


def parsed(msg: EmailMessage) -> EmailMessage:
    """The message as a receiver parses its bytes."""
    return message_from_bytes(msg.as_bytes(), policy=policy.default)  # type: ignore[return-value]


def head(msg: EmailMessage) -> bytes:
    return msg.as_bytes().split(b"\r\n\r\n", 1)[0]


def transfer_encodings(msg: EmailMessage) -> list[str]:
    return [part["Content-Transfer-Encoding"] for part in msg.walk() if not part.is_multipart()]


# -- headers -----------------------------------------------------------------------------------


def test_from_has_the_senders_address_and_name():
    assert parsed(build())["From"] == "Test Sender <sender@example.com>"


def test_from_name_replaces_the_senders_name():
    assert parsed(build(from_name="Billing"))["From"] == "Billing <sender@example.com>"


def test_from_without_any_name_is_the_bare_address():
    nameless = dataclasses.replace(SENDER, name="")
    assert parsed(build(nameless))["From"] == "sender@example.com"


def test_a_display_name_with_specials_is_quoted_and_not_read_as_an_address():
    [address] = parsed(build(from_name='Boss, "CEO" (Finance)'))["From"].addresses
    assert address.display_name == 'Boss, "CEO" (Finance)'
    assert address.addr_spec == "sender@example.com"


def test_a_non_ascii_display_name_is_an_encoded_word():
    msg = build(from_name="Zoë Café")
    assert b"From: =?utf-8?" in head(msg)
    assert parsed(msg)["From"].addresses[0].display_name == "Zoë Café"


def test_to_and_cc_are_headers_and_bcc_is_not():
    msg = build(
        recipient=("to1@example.com", "to2@example.com"),
        cc=("cc@example.com",),
        bcc=("hidden@example.com",),
    )
    got = parsed(msg)
    assert [a.addr_spec for a in got["To"].addresses] == ["to1@example.com", "to2@example.com"]
    assert [a.addr_spec for a in got["Cc"].addresses] == ["cc@example.com"]
    assert got["Bcc"] is None
    assert b"hidden@example.com" not in msg.as_bytes()


def test_no_cc_and_no_reply_to_unless_given():
    got = parsed(build())
    assert got["Cc"] is None and got["Reply-To"] is None


def test_reply_to():
    assert parsed(build(reply_to="replies@example.net"))["Reply-To"] == "replies@example.net"


def test_subject_non_ascii_is_encoded_and_decodes_to_the_original():
    msg = build(subject="Grüße, 日本語 ✓")
    assert head(msg).isascii()
    assert parsed(msg)["Subject"] == "Grüße, 日本語 ✓"


def test_date_is_the_given_time():
    msg = build()
    assert msg["Date"] == "Sat, 14 Mar 2026 15:09:26 +0000"
    assert parsedate_to_datetime(parsed(msg)["Date"]) == DATE


def test_message_id_is_the_request_id_at_the_senders_domain():
    assert parsed(build())["Message-ID"] == f"<{REQUEST_ID}@example.com>"
    other = dataclasses.replace(SENDER, email="news@mail.example.org")
    assert parsed(build(other))["Message-ID"] == f"<{REQUEST_ID}@mail.example.org>"


def test_extra_headers_are_added_and_every_header_is_there_once():
    headers = {"X-Campaign": "spring-2026", "X-Greeting": "Grüße", "In-Reply-To": "<a@b.example>"}
    msg = build(headers=headers)
    got = parsed(msg)
    assert got["X-Campaign"] == "spring-2026"
    assert got["X-Greeting"] == "Grüße"
    assert got["In-Reply-To"] == "<a@b.example>"
    assert head(msg).isascii()
    names = [name.lower() for name in got]
    for name in ("from", "to", "subject", "date", "message-id", *(n.lower() for n in headers)):
        assert names.count(name) == 1, name


LONG_URL = "<https://example.com/unsubscribe?token=" + "a1b2c3d4" * 16 + ">"


@pytest.mark.parametrize(
    "name", ["List-Unsubscribe", "References"], ids=["list_unsubscribe", "references"]
)
def test_a_long_single_token_header_is_not_folded_into_encoded_words(name):
    msg = build(headers={name: LONG_URL})
    raw = re.sub(rb"\r\n[ \t]+", b" ", head(msg))
    [line] = [line for line in raw.split(b"\r\n") if line.startswith(name.encode() + b":")]
    assert b"=?" not in line
    assert line == f"{name}: {LONG_URL}".encode()


def test_a_header_of_several_long_tokens_is_folded_at_whitespace_and_unfolds_to_itself():
    value = f"{LONG_URL}, <mailto:unsubscribe@example.com?subject={'x' * 90}>"
    msg = build(headers={"List-Unsubscribe": value, "References": f"{LONG_URL} {LONG_URL}"})
    lines = head(msg).split(b"\r\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(b"List-Unsubscribe:"))
    assert lines[start + 1].startswith(b" <mailto:")  # the second URL on a line of its own
    assert b"=?" not in head(msg)
    got = parsed(msg)
    assert got["List-Unsubscribe"] == value
    assert got["References"] == f"{LONG_URL} {LONG_URL}"


def test_short_words_are_folded_before_whitespace_within_78_characters():
    value = " ".join(f"<id{i}@mail.example.com>" for i in range(12))
    msg = build(headers={"References": value})
    folded = [line for line in head(msg).split(b"\r\n") if b"<id" in line]
    assert len(folded) > 1
    assert all(len(line) <= 78 for line in folded)
    assert all(line.startswith(b" ") for line in folded[1:])
    assert parsed(msg)["References"] == value


def test_a_non_ascii_extra_header_is_still_an_encoded_word():
    msg = build(headers={"X-Greeting": "Grüße " + "x" * 100})
    assert b"X-Greeting: =?utf-8?" in head(msg)
    assert parsed(msg)["X-Greeting"] == "Grüße " + "x" * 100


def test_a_header_value_with_a_line_break_is_refused_even_past_the_api():
    with pytest.raises(ValueError):
        build(headers={"X-Campaign": "a\r\nBcc: victim@example.com"})


# -- bodies ------------------------------------------------------------------------------------


def content(part: EmailMessage) -> str:
    return part.get_content().replace("\r\n", "\n").rstrip("\n")


def test_body_is_text_plain_unless_is_html():
    plain = build(body="hello")
    html = build(body="<p>hello</p>", is_html=True, text_alternative=False)
    assert (plain.get_content_type(), content(parsed(plain))) == ("text/plain", "hello")
    assert (html.get_content_type(), content(parsed(html))) == ("text/html", "<p>hello</p>")


def test_text_and_html_make_multipart_alternative_text_first():
    msg = parsed(build(body=None, text="plain version", html="<p>html version</p>"))
    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert [content(p) for p in parts] == ["plain version", "<p>html version</p>"]


def test_html_alone_without_a_text_alternative_is_text_html_and_text_alone_text_plain():
    assert build(body=None, html="<p>x</p>", text_alternative=False).get_content_type() == (
        "text/html"
    )
    assert build(body=None, text="x").get_content_type() == "text/plain"
    assert build(body="x", text_alternative=False).get_content_type() == "text/plain"


HTML = (
    "<html><head><style>p {color: red}</style></head><body><h1>Your order</h1>"
    "<p>Thanks, <b>Zoë</b>!</p><p><a href='https://example.com/o/1'>View it</a></p>"
    "<ul><li>one</li><li>two</li></ul></body></html>"
)


@pytest.mark.parametrize(
    "fields",
    [{"body": HTML, "is_html": True}, {"body": None, "html": HTML}],
    ids=["is_html", "html"],
)
def test_html_alone_gets_a_text_alternative_rendered_from_it(fields):
    msg = parsed(build(**fields))
    assert msg.get_content_type() == "multipart/alternative"
    text_part, html_part = msg.iter_parts()
    assert [text_part.get_content_type(), html_part.get_content_type()] == [
        "text/plain",
        "text/html",
    ]
    assert content(html_part) == HTML
    text = content(text_part)
    assert "Your order" in text and "Thanks, Zoë!" in text
    assert "[View it](https://example.com/o/1)" in text  # the link stays usable
    assert "* one" in text and "* two" in text
    assert "<" not in text and "color" not in text  # no markup, no style sheet


def test_a_text_alternative_is_not_added_when_text_is_given_or_for_plain_text():
    both = parsed(build(body=None, text="mine", html="<p>theirs</p>"))
    assert [content(p) for p in both.iter_parts()] == ["mine", "<p>theirs</p>"]
    assert build(body="plain").get_content_type() == "text/plain"


def test_every_line_ends_in_crlf():
    msg = build(body=None, text="one\ntwo\r\nthree\rfour\n\nsix", html="<p>a</p>\n<p>b</p>")
    data = msg.as_bytes()
    assert b"\r\n" in data
    assert re.search(rb"(?<!\r)\n", data) is None, "bare LF"
    assert re.search(rb"\r(?!\n)", data) is None, "bare CR"


def test_ascii_body_is_7bit_and_a_long_line_quoted_printable():
    assert transfer_encodings(build(body="short ascii lines\nonly")) == ["7bit"]
    msg = build(body="x" * 5000)
    assert transfer_encodings(msg) == ["quoted-printable"]
    assert max(len(line) for line in msg.as_bytes().split(b"\r\n")) <= 78
    assert content(parsed(msg)) == "x" * 5000


@pytest.mark.parametrize(
    "fields",
    [
        {"body": "Grüße ✓"},
        {"body": "<p>Grüße ✓</p>", "is_html": True},
        {"body": None, "text": "Grüße ✓", "html": "<p>Grüße ✓</p>"},
    ],
    ids=["plain", "html", "alternative"],
)
def test_non_ascii_body_without_smtputf8_is_never_8bit(fields):
    msg = build(**fields)
    assert set(transfer_encodings(msg)) <= {"7bit", "quoted-printable", "base64"}
    assert msg.as_bytes().isascii()


def test_an_smtputf8_message_keeps_8bit_bodies():
    msg = build(recipient=("jöe@example.com",), body="Grüße ✓")
    assert transfer_encodings(msg) == ["8bit"]
    assert content(parsed(msg)) == "Grüße ✓"


def test_non_ascii_body_decodes_to_the_original():
    text = "Grüße ✓\n" + "é" * 3000
    assert content(parsed(build(body=text))) == text


# -- international addresses -------------------------------------------------------------------


def test_ascii_addresses_use_the_ascii_policy():
    msg = build(reply_to="r@example.com", cc=("c@example.com",))
    assert msg.policy.utf8 is False
    assert head(msg).isascii()


@pytest.mark.parametrize(
    ("fields", "address"),
    [
        ({"recipient": ("用户@例子.广告",)}, "用户@例子.广告"),
        ({"cc": ("jöe@example.com",)}, "jöe@example.com"),
        ({"reply_to": "回复@example.com"}, "回复@example.com"),
    ],
    ids=["to", "cc", "reply_to"],
)
def test_a_non_ascii_local_part_uses_the_utf8_policy_and_raw_utf8_headers(fields, address):
    msg = build(**fields)
    assert msg.policy.utf8 is True
    assert address.encode() in head(msg)
    assert b"=?" not in head(msg)  # an encoded word inside an addr-spec is no address at all


def test_a_non_ascii_bcc_alone_also_needs_smtputf8():
    # Bcc is in no header, but the envelope needs SMTPUTF8 all the same.
    msg = build(bcc=("jöe@example.com",))
    assert msg.policy.utf8 is True
    assert "jöe".encode() not in msg.as_bytes()


def test_an_international_sender_uses_the_utf8_policy():
    sender = dataclasses.replace(SENDER, email="müller@example.com")
    msg = build(sender)
    assert msg.policy.utf8 is True
    assert "From: Test Sender <müller@example.com>".encode() in head(msg)


# -- the header registry's kept MIME headers ---------------------------------------------------


def test_kept_mime_headers_are_bounded_and_never_hold_a_boundary():
    registry = CachedHeaderRegistry()
    first = registry("Content-Transfer-Encoding", "7bit")
    assert registry("Content-Transfer-Encoding", "7bit") is first
    for i in range(registry.MAX_KEPT * 2):
        registry("Content-Type", f'text/plain; charset="x-{i}"')
    registry("Content-Type", 'multipart/alternative; boundary="b1"')
    assert len(registry._kept) == registry.MAX_KEPT
    assert not any("boundary" in value for _, value in registry._kept)


def test_messages_that_share_kept_headers_stay_apart():
    one = build(body=None, text="Grüße", html="<p>Grüße</p>")
    two = build(body=None, text="plain", html="<p>plain</p>")
    assert parsed(one).get_boundary() != parsed(two).get_boundary()
    assert [content(p) for p in parsed(one).iter_parts()] == ["Grüße", "<p>Grüße</p>"]
    assert [content(p) for p in parsed(two).iter_parts()] == ["plain", "<p>plain</p>"]
    assert parsed(build(body="x"))["Content-Type"] == 'text/plain; charset="utf-8"'


# -- attachments (delivery/attachments.py) -----------------------------------------------------

PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + bytes(range(256)) * 4 + b"\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(255, -1, -1))
INVOICE = Attachment("invoice.pdf", "application/pdf", PDF)
LOGO = Attachment("logo.png", "image/png", PNG, "logo@example.com")
LOGO_HTML = '<p>Hello</p><img src="cid:logo@example.com" alt="">'


def structure(part: EmailMessage) -> object:
    """The MIME tree as nested (type, [children]) or the leaf's content type."""
    if part.is_multipart():
        return (part.get_content_type(), [structure(p) for p in part.iter_parts()])
    return part.get_content_type()


def leaves(msg: EmailMessage) -> list[EmailMessage]:
    return [part for part in msg.walk() if not part.is_multipart()]  # type: ignore[misc]


def test_an_attachment_makes_multipart_mixed_with_the_body_first_and_its_bytes_intact():
    msg = parsed(build(attachments=(INVOICE,)))
    assert structure(msg) == ("multipart/mixed", ["text/plain", "application/pdf"])
    body, pdf = msg.iter_parts()
    assert content(body) == "Hello"
    assert pdf.get_content_disposition() == "attachment"
    assert pdf.get_filename() == "invoice.pdf"
    assert pdf["Content-Transfer-Encoding"] == "base64"
    assert pdf.get_content() == PDF
    assert pdf["Content-ID"] is None


def test_an_inline_part_is_related_to_the_html_alone():
    msg = parsed(build(body=None, html=LOGO_HTML, text_alternative=False, attachments=(LOGO,)))
    assert structure(msg) == ("multipart/related", ["text/html", "image/png"])
    assert msg.get_param("type") == "text/html"  # RFC 2387: the root part's type
    html, logo = msg.iter_parts()
    assert content(html) == LOGO_HTML
    assert logo["Content-ID"] == "<logo@example.com>"
    assert logo.get_content_disposition() == "inline"
    assert logo.get_filename() == "logo.png"
    assert logo.get_content() == PNG


@pytest.mark.parametrize(
    "fields",
    [{"text": "Hello"}, {}, {"body": LOGO_HTML, "is_html": True, "html": None}],
    ids=["text_and_html", "html_with_rendered_text", "body_is_html"],
)
def test_inline_parts_are_related_to_the_html_inside_the_alternative(fields):
    spec = {"body": None, "html": LOGO_HTML, "attachments": (LOGO,), **fields}
    msg = parsed(build(**spec))
    assert structure(msg) == (
        "multipart/alternative",
        ["text/plain", ("multipart/related", ["text/html", "image/png"])],
    )
    text, related = msg.iter_parts()
    assert "Hello" in content(text) and "cid:" not in content(text)
    assert msg.get_body(("html",)).get_content().startswith("<p>Hello</p>")  # type: ignore[union-attr]
    [logo] = [p for p in related.iter_parts() if p["Content-ID"] == "<logo@example.com>"]
    assert logo.get_content() == PNG


def test_both_kinds_make_mixed_around_the_alternative_with_its_related_html():
    msg = parsed(build(body=None, text="Hi", html=LOGO_HTML, attachments=(INVOICE, LOGO, INVOICE)))
    assert structure(msg) == (
        "multipart/mixed",
        [
            (
                "multipart/alternative",
                ["text/plain", ("multipart/related", ["text/html", "image/png"])],
            ),
            "application/pdf",
            "application/pdf",
        ],
    )
    assert [p.get_content() for p in msg.iter_attachments()] == [PDF, PDF]


def test_an_inline_part_without_any_html_goes_into_mixed_still_inline():
    # The API refuses it (400); a spec from elsewhere still builds a message a client can show.
    msg = parsed(build(attachments=(LOGO,)))
    assert structure(msg) == ("multipart/mixed", ["text/plain", "image/png"])
    logo = list(msg.iter_parts())[1]
    assert logo.get_content_disposition() == "inline" and logo.get_content() == PNG


@pytest.mark.parametrize("smtputf8", [False, True], ids=["ascii", "smtputf8"])
@pytest.mark.parametrize(
    "filename",
    ["Rechnung März 2026.pdf", "請求書.pdf", 'Rechnung "März" (2026); final.pdf', "ä" * 200],
    ids=["german", "japanese", "quotes_and_specials", "long"],
)
def test_a_non_ascii_filename_is_rfc_2231_and_decodes_to_itself(filename, smtputf8):
    recipient = ("jöe@example.com",) if smtputf8 else ("user@example.com",)
    msg = build(recipient=recipient, attachments=(dataclasses.replace(INVOICE, filename=filename),))
    assert bool(msg.policy.utf8) is smtputf8
    raw = msg.as_bytes()
    [part_head] = [h for h in raw.split(b"\r\n\r\n") if b"Content-Disposition" in h]
    assert part_head.isascii(), "not raw UTF-8 in the quotes, even with SMTPUTF8"
    assert b"filename*" in part_head and b"utf-8''" in part_head
    assert b"=?" not in part_head, "never RFC 2047 encoded words in a parameter"
    assert max(len(line) for line in part_head.split(b"\r\n")) <= 78
    [got] = parsed(msg).iter_attachments()
    assert got.get_filename() == filename
    assert got.get_content() == PDF


def test_an_ascii_filename_is_a_quoted_parameter():
    msg = build(attachments=(dataclasses.replace(INVOICE, filename='my "best" invoice.pdf'),))
    assert b'Content-Disposition: attachment; filename="my \\"best\\" invoice.pdf"' in (
        msg.as_bytes()
    )


def test_a_long_content_id_stays_one_token_that_cid_urls_match():
    cid = "part." + "a1b2c3d4" * 30 + "@example.com"
    msg = build(body=None, html=f'<img src="cid:{cid}">', attachments=(
        dataclasses.replace(LOGO, content_id=cid),
    ))  # fmt: skip
    assert f"Content-ID: <{cid}>\r\n".encode() in msg.as_bytes()
    [logo] = [p for p in parsed(msg).walk() if p["Content-ID"]]
    assert logo["Content-ID"] == f"<{cid}>"


def test_a_message_with_binary_attachments_stays_7bit_ascii():
    blob = bytes(range(256)) * 64
    msg = build(
        body=None,
        text="Grüße",
        html=LOGO_HTML,
        attachments=(dataclasses.replace(INVOICE, content=blob), LOGO),
    )
    data = msg.as_bytes()
    assert data.isascii()
    assert max(len(line) for line in data.split(b"\r\n")) <= 78
    encodings = {p.get_content_type(): p["Content-Transfer-Encoding"] for p in leaves(msg)}
    assert encodings["application/pdf"] == encodings["image/png"] == "base64"
    assert [p.get_content() for p in parsed(msg).iter_attachments()] == [blob]


def test_an_empty_file_is_attached_as_an_empty_part():
    [got] = parsed(
        build(attachments=(dataclasses.replace(INVOICE, content=b""),))
    ).iter_attachments()
    assert got.get_content() == b"" and got.get_filename() == "invoice.pdf"


WIRE_CASES = [
    {"body": "Hello\nsecond line\n"},
    {"body": "<p>Héllo wörld</p>" * 40, "is_html": True},
    {"text": "ünïcode " * 200, "html": "<p>a</p>\r\n<p>b</p>"},
    {"body": "x" * 2000 + "\r\ny\rz\n"},
    {"body": "a\r\r\nb\n\rc\n\n\r\r"},
    {
        "html": '<img src="cid:logo"><p>Invoice</p>',
        "attachments": (
            Attachment("Rechnung März.pdf", "application/pdf", bytes(range(256)) * 400),
            Attachment("logo.png", "image/png", b"\x89PNG" * 100, "logo"),
        ),
    },
]


@pytest.mark.parametrize("fields", WIRE_CASES)
@pytest.mark.parametrize("recipient", ["user@example.com", "jöe@example.com"])
def test_wire_bytes_are_exactly_what_as_bytes_gives(fields, recipient):
    msg = build_message(
        MessageSpec(recipient=(recipient,), subject="Wire", **fields), SENDER, REQUEST_ID, DATE
    )
    assert wire_bytes(msg) == msg.as_bytes()


def test_every_multipart_has_its_boundary_before_it_is_flattened():
    """Set at build (`=_` and 128 random bits), so the generator never searches for one."""
    msg = build_message(
        MessageSpec(recipient=("user@example.com",), subject="Alt", text="t", html="<p>h</p>"),
        SENDER,
        REQUEST_ID,
        DATE,
    )
    boundary = msg.get_boundary()
    assert boundary is not None and boundary.startswith("=_") and len(boundary) == 34
    assert f"--{boundary}".encode() in wire_bytes(msg)
