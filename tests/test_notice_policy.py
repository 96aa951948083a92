"""Which failures get a notice, and when (mailservice/delivery/notice_policy.py): the reason
classes of API.md section 4 and the one-a-minute window, with an injected clock."""

from __future__ import annotations

import logging
import threading

import pytest

from mailservice.delivery.notice_policy import REASON_CLASSES, HeldBack, NoticeWindow, reason_class
from tests.conftest import ManualClock

SENDER = "sender@example.com"
OTHER_SENDER = "other@example.org"


# -- reason classes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (
            "every recipient was refused: a@example.com: 550 5.1.1 no such user (at RCPT TO)",
            "refused",
        ),
        ("login refused: 535 5.7.8 bad credentials", "login"),
        ("server offers no AUTH for the configured login", "login"),
        ("TLS certificate not trusted: self-signed certificate", "tls"),
        (
            "server does not offer STARTTLS (SMTP_SECURITY=starttls); refusing to log in",
            "tls",
        ),
        (
            "cannot connect to 127.0.0.1:1: [Errno 111] Connection refused (after 5 attempts)",
            "transient",
        ),
        ("a@example.com: 450 4.2.1 mailbox busy (at RCPT TO) (after 3 attempts)", "transient"),
        (
            "possibly delivered: no reply to the end of DATA within 600s (after 5 attempts)",
            "possibly-delivered",
        ),
        (
            "550 no (at end of DATA); an earlier attempt was possibly delivered (same Message-ID)",
            "possibly-delivered",
        ),
        ("server does not support SMTPUTF8 for international addresses", "smtputf8"),
        ("550 5.7.1 message content rejected (at end of DATA)", "rejected"),
        ("554 5.7.1 sender blocked (at MAIL FROM)", "rejected"),
        ("its sender is no longer configured", "sender-removed"),
        ("shutdown before send", "shutdown"),
        ("internal error: KeyError", "internal"),
        ("the stored request cannot be read: the stored message is not JSON", "other"),
        ("connection lost: something odd", "other"),
        (None, "other"),
        ("", "other"),
    ],
)
def test_reason_class_names_the_kinds_of_api_section_4(error: str | None, kind: str) -> None:
    assert reason_class(error) == kind
    assert kind in REASON_CLASSES


# -- the window -------------------------------------------------------------------------------

KEY = (SENDER, "refused")


def test_window_lets_one_notice_a_minute_through_and_counts_the_rest() -> None:
    clock = ManualClock()
    window = NoticeWindow(clock=clock)
    assert window.admit(KEY, "r0") == HeldBack(0, ())
    for i in range(1, 5):
        clock.advance(10)
        assert window.admit(KEY, f"r{i}") is None
    clock.advance(19.9)  # 59.9 s after the notice
    assert window.admit(KEY, "r5") is None
    clock.advance(0.1)
    assert window.admit(KEY, "r6") == HeldBack(5, ("r1", "r2", "r3", "r4", "r5"))
    assert window.admit(KEY, "r7") is None  # a new minute began with that notice


def test_window_keeps_keys_apart() -> None:
    window = NoticeWindow(clock=ManualClock())
    assert window.admit((SENDER, "refused"), "a") == HeldBack()
    assert window.admit((SENDER, "transient"), "b") == HeldBack()
    assert window.admit((OTHER_SENDER, "refused"), "c") == HeldBack()
    assert window.admit((SENDER, "refused"), "d") is None


def test_window_lists_the_first_ids_and_counts_all() -> None:
    clock = ManualClock()
    window = NoticeWindow(clock=clock)
    window.admit(KEY, "first")
    for i in range(25):
        window.admit(KEY, f"r{i}")
    clock.advance(60)
    held = window.admit(KEY, "last")
    assert held is not None
    assert held.count == 25
    assert held.request_ids == tuple(f"r{i}" for i in range(10))


def test_a_notice_given_back_reopens_the_window_and_counts_toward_the_next() -> None:
    clock = ManualClock()
    window = NoticeWindow(clock=clock)
    window.admit(KEY, "r0")
    window.admit(KEY, "r1")  # held back
    clock.advance(60)
    held = window.admit(KEY, "r2")
    assert held == HeldBack(1, ("r1",))
    window.admit(KEY, "r3")  # held back while r2's notice was being refused
    window.give_back(KEY, "r2", held)
    assert window.admit(KEY, "r4") == HeldBack(3, ("r1", "r2", "r3"))


def test_window_is_bounded_and_forgets_the_oldest_notice_first(caplog) -> None:
    window = NoticeWindow(max_keys=3, clock=ManualClock())
    for n in range(3):
        window.admit((f"s{n}@example.com", "refused"), f"r{n}")
    window.admit(("s0@example.com", "refused"), "held")  # s0 holds one back
    with caplog.at_level(logging.WARNING):
        window.admit(("s3@example.com", "refused"), "r3")
    assert len(window) == 3
    assert "1 held-back failures of s0@example.com (refused) forgotten" in caplog.text
    # s0 was forgotten, so its next failure gets a notice at once; s1 is still in its minute.
    assert window.admit(("s0@example.com", "refused"), "again") == HeldBack()
    assert window.admit(("s2@example.com", "refused"), "r2b") is None


def test_window_admits_exactly_one_of_many_threads_at_once() -> None:
    clock = ManualClock()
    window = NoticeWindow(clock=clock)
    admitted: list[HeldBack] = []
    start = threading.Barrier(8)

    def fail_many(thread: int) -> None:
        start.wait()
        for i in range(200):
            held = window.admit(KEY, f"t{thread}-{i}")
            if held is not None:
                admitted.append(held)

    threads = [threading.Thread(target=fail_many, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(admitted) == 1
    clock.advance(60)
    held = window.admit(KEY, "next")
    assert held is not None
    assert held.count == 8 * 200 - 1  # every failure but the admitted one, none lost
