"""The suppression list on the send path (API.md section 3, "Suppression list").

A recipient that a server refused at RCPT with a permanent "no such user" (550 with the
enhanced status code 5.1.1, 5.1.0 or 5.2.1, RFC 3463) is put on the sender account's list
for SUPPRESSION_DAYS, with the reply; until then an attempt leaves it out of the transaction
and lists it in `refused` as "suppressed: <that reply>", without asking the server again.
`DeliveryAttempt` calls `screen()` before the SMTP transaction and `learn()` after it. A
failed request retried by hand (delivery/lifecycle.py) takes its refused recipients off the
list first (`forget_refused()`): retrying says the cause is fixed; refused again, they go back.

A store that cannot be read here does not hold the message up or fail it: the attempt sends
to every pending recipient without the check (a suppressed one gets one more refusal, which
renews its entry), and the outage is logged once when it starts and once when it ends. A
refusal that cannot be recorded is logged the same way and only lost: the next one records
it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import timedelta

from mailservice.errors import StoreError
from mailservice.stores.contract import OutageLog, StatusRecord, StatusStore, utcnow

logger = logging.getLogger(__name__)

# describe_reply()'s "<code> <text>": the basic code 550, then the enhanced code at the start
# of the text (RFC 2034), as one token: 5.1.10 is another code.
NO_SUCH_USER = re.compile(r"^550[ -](5\.1\.[01]|5\.2\.1)(?![\d.])")
SUPPRESSED = "suppressed: "  # the start of a suppressed recipient's line in `refused`


def no_such_user(reply: str) -> bool:
    """Whether an RCPT reply says the mailbox does not exist (or is disabled) for good. Not
    a refusal of our sender address (Postfix's `550 5.1.0 <me@x>: Sender address rejected`,
    given at RCPT for every recipient): that says nothing of the recipient."""
    text = reply.strip()
    return NO_SUCH_USER.match(text) is not None and "sender address" not in text.lower()


def forget_refused(store: StatusStore, account: str, refused: Mapping[str, str]) -> None:
    """Take a retried request's recipients that were refused as unknown, or suppressed, off
    `account`'s list; a store error leaves them on it (the retry is not held up)."""
    for address, reason in refused.items():
        if no_such_user(reason.removeprefix(SUPPRESSED)):
            try:
                store.unsuppress(account, address)
            except ValueError:
                continue
            except StoreError as exc:
                logger.warning("suppression list unwritable: %s (entries kept)", exc)
                return


class SuppressionFilter:
    """The send path's use of the store's suppression lists."""

    def __init__(self, store: StatusStore, days: int) -> None:
        if days < 1:
            raise ValueError("SUPPRESSION_DAYS is at least 1")
        self.store = store
        self.days = days
        self._reading = OutageLog(
            logger,
            down="suppression list unreadable: %s (sending without the check until it returns)",
            up="suppression list readable again",
        )
        self._writing = OutageLog(
            logger,
            down="suppression list unwritable: %s (refusals not recorded until it returns)",
            up="suppression list writable again",
        )

    def lookup(self, account: str, recipients: Sequence[str]) -> dict[str, str]:
        """Which of `recipients` are on `account`'s list, each with the reply that put it
        there; none when the list cannot be read (the outage logged). Reads only: a dry run
        asks this too."""
        try:
            found = self.store.suppressed(account, recipients)
        except StoreError as exc:
            self._reading.failed(exc)
            return {}
        self._reading.succeeded()
        return dict(found)

    def screen(self, record: StatusRecord, account: str) -> StatusRecord:
        """`record` with its suppressed pending recipients moved to `refused`; the record as
        it is when none is (or when the list cannot be read)."""
        if not record.pending:
            return record
        found = self.lookup(account, record.pending)
        if not found:
            return record
        logger.info(
            "request_id=%s: %d suppressed recipient(s) left out", record.request_id, len(found)
        )
        refused = {**record.refused, **{a: SUPPRESSED + reason for a, reason in found.items()}}
        pending = tuple(a for a in record.pending if a not in found)
        return replace(record, refused=refused, pending=pending)

    def learn(self, account: str, refused: Mapping[str, str], request_id: str) -> None:
        """Put the recipients of one transaction refused as "no such user" on the list."""
        until = utcnow() + timedelta(days=self.days)
        added = 0
        for address, reply in refused.items():
            if not no_such_user(reply):
                continue
            try:
                self.store.suppress(account, address, reply, until)
            except ValueError:  # not an address the list can hold; nothing to remember
                continue
            except StoreError as exc:
                self._writing.failed(exc)
                break
            self._writing.succeeded()
            added += 1
        if added:  # the count, not the addresses: the service log names no recipient
            line = "request_id=%s: %d recipient(s) suppressed for %d days"
            logger.info(line, request_id, added, self.days)
