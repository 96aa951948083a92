"""A message submitted whole (delivery/raw_message.py): what is refused, what is changed (a
Message-ID added, Bcc removed, CRLF), and that an attempt relays exactly those bytes to a real
aiosmtpd server."""

from __future__ import annotations

import pytest

from mailservice.delivery.attempt import AttemptState, DeliveryAttempt
from mailservice.delivery.message_spec import MessageSpec
from mailservice.delivery.raw_message import RawMessageError, prepare_raw
from mailservice.delivery.smtp_client import SmtpClient
from mailservice.delivery.transitions import Final
from mailservice.events.bus import EventBus
from mailservice.senders import Sender
from mailservice.stores.contract import EmailStatus, StatusRecord, utcnow
from mailservice.stores.memory_store import MemoryStatusStore

SENDER = Sender("me@example.com", "", "127.0.0.1", 25, "none")
RID = "11111111-1111-4111-8111-111111111111"


def raw(*headers: str, body: str = "Hello\r\n") -> bytes:
    return ("\r\n".join(headers) + "\r\n\r\n" + body).encode()


def test_a_message_id_is_added_bcc_removed_the_rest_kept_byte_for_byte():
    data = raw(
        "From: Me <me@example.com>",
        "To: you@example.org",
        "Bcc: hidden@example.net,",
        " other@example.net",
        "Subject: =?utf-8?q?Caf=C3=A9?=",
        "X-Custom: kept",
        body="line one\r\n.dotted\r\n",
    )
    prepared = prepare_raw(data, SENDER, RID)
    assert prepared.message_id == f"<{RID}@example.com>"
    assert prepared.subject == "Café"
    assert prepared.data == raw(
        "From: Me <me@example.com>",
        "To: you@example.org",
        "Subject: =?utf-8?q?Caf=C3=A9?=",
        "X-Custom: kept",
        f"Message-ID: <{RID}@example.com>",
        body="line one\r\n.dotted\r\n",
    )


def test_a_message_id_of_its_own_is_kept_and_bare_lf_becomes_crlf():
    data = b"From: me@EXAMPLE.com\nMessage-ID: <abc@client>\nSubject: x\n\nbody\n"
    prepared = prepare_raw(data, SENDER, RID)
    assert prepared.message_id == "<abc@client>"
    assert (
        prepared.data
        == b"From: me@EXAMPLE.com\r\nMessage-ID: <abc@client>\r\nSubject: x\r\n\r\nbody\r\n"
    )


@pytest.mark.parametrize("empty", ["Message-ID:", "Message-ID:   ", "message-id:\r\n  "])
def test_an_empty_message_id_is_replaced_not_left_beside_the_added_one(empty: str):
    data = ("From: me@example.com\r\n" + empty + "\r\nSubject: x\r\n\r\nbody\r\n").encode()
    prepared = prepare_raw(data, SENDER, RID)
    assert prepared.message_id == f"<{RID}@example.com>"
    assert prepared.data == raw(
        "From: me@example.com", "Subject: x", f"Message-ID: <{RID}@example.com>", body="body\r\n"
    )


def test_resent_bcc_is_removed_and_resent_from_of_the_login_kept():
    data = raw("From: me@example.com", "Resent-From: Me <me@example.com>",
               "Resent-Sender: me@example.com", "Resent-Bcc: hidden@example.net",
               "Message-ID: <a@b>")  # fmt: skip
    assert prepare_raw(data, SENDER, RID).data == raw(
        "From: me@example.com", "Resent-From: Me <me@example.com>",
        "Resent-Sender: me@example.com", "Message-ID: <a@b>",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("data", "reply"),
    [
        (raw("From: me@example.com", "Subject: a\0b"), "554 5.6.0 The message has a NUL"),
        (raw("From: me@example.com", body="x" * 999 + "\r\n"), "554 5.6.0 The message has a line"),
        (raw("Subject: no from"), "554 5.6.0 The message has no From: header"),
        (raw("From: boss@example.com"), "550 5.7.1 From: must be this login's own address"),
        (raw("From: me@example.com", "Sender: boss@example.com"), "550 5.7.1 Sender:"),
        (raw("From: me@example.com, boss@example.com"), "554 5.6.0 From: must hold one address"),
        (raw("From: me@example.com", "From: me@example.com"), "554 5.6.0 The message has more"),
        (raw("From: me@example.com", "Message-ID: <a@b>", "Message-ID: <c@d>"),
         "554 5.6.0 The message has more than one Message-ID:"),
        (raw("From: me@example.com", "Message-ID:", "Message-ID: <c@d>"),
         "554 5.6.0 The message has more than one Message-ID:"),
        (raw("From: me@example.com", "Resent-From: boss@example.com"), "550 5.7.1 Resent-From:"),
        (raw("From: me@example.com", "Resent-Sender: boss@example.com"),
         "550 5.7.1 Resent-Sender:"),
        (raw("From: me@example.com", "Resent-From: me@example.com, boss@example.com"),
         "554 5.6.0 Resent-From: must hold one address"),
        (b"no header at all\r\n\r\nbody", "554 5.6.0 The message has a malformed header line"),
        (b"", "554 5.6.0 The message has no header"),
    ],
)  # fmt: skip
def test_what_must_not_be_relayed_is_refused_with_its_reply(data: bytes, reply: str):
    with pytest.raises(RawMessageError) as caught:
        prepare_raw(data, SENDER, RID)
    assert caught.value.reply.startswith(reply)


def test_the_stored_spec_keeps_the_bytes_and_an_attempt_relays_them(smtp_server):
    data = raw("From: me@example.com", "To: you@example.org", "Subject: =?utf-8?q?=C3=9C?=",
               body="Bödy\r\n")  # fmt: skip
    prepared = prepare_raw(data, SENDER, RID)
    spec = MessageSpec(recipient=("you@example.org", "hidden@example.net"), subject="x",
                       raw=prepared.data)  # fmt: skip
    payload = spec.to_json()
    assert payload.isascii()
    assert MessageSpec.from_json(payload) == spec
    store = MemoryStatusStore(60)
    now = utcnow()
    recipients = spec.recipients
    record = StatusRecord(RID, EmailStatus.QUEUED, SENDER.email, tuple(recipients),
                          tuple(recipients), now, now, owner="me")  # fmt: skip
    store.create(record, payload)
    sender = Sender(SENDER.email, "", "127.0.0.1", smtp_server.port, "none")
    attempt = DeliveryAttempt(store, SmtpClient(5.0), EventBus())
    outcome = attempt.run(AttemptState(record, payload), sender)
    assert isinstance(outcome.next, Final) and outcome.next.record.status is EmailStatus.SENT
    [got] = smtp_server.received
    assert got.content.replace(b"\r\n", b"\n") == prepared.data.replace(b"\r\n", b"\n")
    assert sorted(got.rcpt_tos) == ["hidden@example.net", "you@example.org"]
    assert got.mail_options == ["BODY=8BITMIME"]  # an 8-bit body; ASCII headers: no SMTPUTF8
    attempt.smtp.close_all()


def test_utf8_headers_ask_for_smtputf8():
    from mailservice.delivery.outgoing import outgoing

    prepared = prepare_raw(raw("From: me@example.com", "Subject: Ünïcode"), SENDER, RID)
    spec = MessageSpec(recipient=("you@example.org",), subject="", raw=prepared.data)
    assert outgoing(spec, SENDER, RID, utcnow()).smtputf8 is True
    plain = prepare_raw(raw("From: me@example.com"), SENDER, RID).data
    ascii_spec = MessageSpec(recipient=("you@example.org",), subject="", raw=plain)
    assert outgoing(ascii_spec, SENDER, RID, utcnow()).smtputf8 is False
