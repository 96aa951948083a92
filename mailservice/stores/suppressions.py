"""The suppression list's values and its part of the store interface (API.md section 3,
"Suppression list").

Each sender's account (`Sender.account`, its lower-cased address) has a list of recipient
addresses not to send to, each with the reply that put it there and the moment it expires.
Addresses are kept lower-cased whole (local part and domain: `normalized()`), so that one
entry covers every spelling of an address; an account is lower-cased the same way. The
interface's public methods (`suppress`, `suppressed`, `suppressions`, `unsuppress`) check and
normalise their arguments here, once, and each backend implements the underscored steps in
one round trip (one lock, one statement, one pipeline or script); an expired entry is never
answered, whenever the backend deletes it.

The list is walked in (account, address) order, the same on every backend: an address holds
no whitespace or control character (`normalized()` refuses them), so the text
"<account> <address>" sorts as the pair does, which Redis's lexicographic sorted set and the
memory store's sorted list rely on. A page's `after` is the cursor of the next page:
base64url of that text, the same on every backend.
"""

from __future__ import annotations

import base64
import binascii
from abc import ABC
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

SEPARATOR = " "  # between account and address in a list key: sorts below any address character
ADDRESS_MAX = 254  # RFC 5321's bound of a path's address
REASON_MAX = 500  # characters of the reply kept with an entry (a server's text may be long)
SUPPRESSION_PAGE_MAX = 100  # entries one suppressions() call answers, at most


def normalized(address: str) -> str:
    """`address` as the list keeps it: lower-cased whole; ValueError when it cannot be a
    recipient's address (empty, longer than 254 characters, no @, whitespace or control
    characters)."""
    lowered = address.strip().lower()
    if not lowered or len(lowered) > ADDRESS_MAX or "@" not in lowered:
        raise ValueError("not an email address")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in lowered):
        raise ValueError("an address holds no whitespace or control character")
    return lowered


def key_of(account: str, address: str) -> str:
    """The text an entry is sorted by: "<account> <address>" (both normalised)."""
    return f"{account}{SEPARATOR}{address}"


@dataclass(frozen=True, slots=True)
class Suppression:
    """One suppressed address of one account: the reply that put it there (`reason`), when it
    was recorded (`created_at`) and when it expires (`until`), both in UTC."""

    account: str
    address: str
    reason: str
    created_at: datetime
    until: datetime

    @property
    def key(self) -> str:
        return key_of(self.account, self.address)

    def public(self) -> dict[str, str]:
        """The JSON of one entry in the admin API (API.md section 3)."""
        return {
            "sender": self.account,
            "address": self.address,
            "reason": self.reason,
            "created_at": _shown(self.created_at),
            "expires_at": _shown(self.until),
        }


@dataclass(frozen=True, slots=True)
class SuppressionPage:
    """One page of the list; `after` is the next page's cursor, None on the last."""

    entries: tuple[Suppression, ...]
    after: str | None = None


def _shown(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def cursor_of(account: str, address: str) -> str:
    """The cursor of the page after the one ending with this entry."""
    raw = key_of(account, address).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def parse_cursor(cursor: str) -> tuple[str, str]:
    """(account, address) of a cursor; ValueError when it is not one."""
    if not cursor or len(cursor) > 1024 or not cursor.isascii():
        raise ValueError("not a cursor of the suppression list")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("utf-8")
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not a cursor of the suppression list") from exc
    account, sep, address = raw.partition(SEPARATOR)
    try:
        if not sep or normalized(account) != account or normalized(address) != address:
            raise ValueError("not a cursor of the suppression list")
    except ValueError as exc:
        raise ValueError("not a cursor of the suppression list") from exc
    return account, address


def epoch(moment: datetime) -> float:
    """A moment as Unix time (how SQLite and Redis keep an entry's times)."""
    return moment.timestamp()


def from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class SuppressionStore(ABC):
    """The suppression list's part of `StatusStore` (contract.py): each account's suppressed
    addresses, shared by every process on a durable store, expiring at their `until`.
    `tests/test_suppression_store.py` is its contract, run on every backend."""

    def suppress(self, account: str, address: str, reason: str, until: datetime) -> Suppression:
        """Add (or renew, with the new reason and expiry) `address` to `account`'s list until
        `until` (an aware datetime; one already past adds nothing that would be answered). The
        entry as stored; ValueError for a malformed account or address, StoreError if the
        store can't be written."""
        if until.tzinfo is None:
            raise ValueError("until must be an aware datetime")
        entry = Suppression(
            normalized(account),
            normalized(address),
            " ".join(reason.split())[:REASON_MAX],
            datetime.now(UTC),
            until.astimezone(UTC),
        )
        self._suppress(entry)
        return entry

    def suppressed(self, account: str, addresses: Sequence[str]) -> dict[str, str]:
        """Which of `addresses` are on `account`'s list now, each (as given) with its stored
        reason: one round trip for a whole message's recipients, nothing read for none. An
        address that cannot be on the list (malformed) is not in the answer."""
        wanted: dict[str, list[str]] = {}
        for given in addresses:
            try:
                wanted.setdefault(normalized(given), []).append(given)
            except ValueError:
                continue
        if not wanted:
            return {}
        found = self._suppressed(normalized(account), sorted(wanted))
        return {given: found[n] for n in found if n in wanted for given in wanted[n]}

    def suppressions(
        self, account: str | None, limit: int, after: str | None = None
    ) -> SuppressionPage:
        """Unexpired entries in (account, address) order: of `account` only, or of every
        account when None; at most `limit` (1 to SUPPRESSION_PAGE_MAX), after the cursor
        `after` (a page's `after`) when given. ValueError for a bad limit, a malformed account
        or cursor, or a cursor of another account's list."""
        if not 1 <= limit <= SUPPRESSION_PAGE_MAX:
            raise ValueError(f"a page holds 1 to {SUPPRESSION_PAGE_MAX} entries")
        own = None if account is None else normalized(account)
        start = None if after is None else parse_cursor(after)
        if own is not None and start is not None and start[0] != own:
            raise ValueError("not a cursor of this sender's list")
        return self._suppressions(own, limit, start)

    def unsuppress(self, account: str, address: str) -> bool:
        """Remove `address` from `account`'s list: False when it was not on it (or expired)."""
        return self._unsuppress(normalized(account), normalized(address))

    # Each backend keeps its lists in a helper of its own (`memory_suppressions.py`,
    # `sqlite_suppressions.py`, `redis_suppressions.py`) with these four calls; a backend
    # whose errors need wrapping as StoreError says how in `_lists_guard`.
    _lists: SuppressionLists

    def _lists_guard(self) -> AbstractContextManager[object]:
        return nullcontext()

    def _suppress(self, entry: Suppression) -> None:
        """Store `entry` in place of any entry of its account and address."""
        with self._lists_guard():
            self._lists.suppress(entry)

    def _suppressed(self, account: str, addresses: Sequence[str]) -> dict[str, str]:
        """Normalised address -> reason of those of `addresses` (normalised, distinct) that are
        on the list and unexpired; one round trip."""
        with self._lists_guard():
            return self._lists.suppressed(account, addresses)

    def _suppressions(
        self, account: str | None, limit: int, after: tuple[str, str] | None
    ) -> SuppressionPage:
        """The page, its arguments checked; a bounded amount of work per call."""
        with self._lists_guard():
            return self._lists.suppressions(account, limit, after)

    def _unsuppress(self, account: str, address: str) -> bool:
        """Delete the entry; whether an unexpired one was there."""
        with self._lists_guard():
            return self._lists.unsuppress(account, address)


class SuppressionLists(Protocol):
    """A backend's helper that keeps the lists (the four calls `SuppressionStore` makes)."""

    def suppress(self, entry: Suppression) -> None: ...
    def suppressed(self, account: str, addresses: Sequence[str]) -> dict[str, str]: ...
    def suppressions(
        self, account: str | None, limit: int, after: tuple[str, str] | None
    ) -> SuppressionPage: ...
    def unsuppress(self, account: str, address: str) -> bool: ...
