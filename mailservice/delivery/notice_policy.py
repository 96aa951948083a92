"""Which failures get an ADMIN_EMAIL notice, and when: reason classes and the notice window.

`reason_class(error)` names the kind of a failed request's `error`, from the texts a client
can rely on (API.md section 4): `refused`, `login`, `tls`, `transient`, `possibly-delivered`,
`smtputf8`, `rejected`, `sender-removed`, `shutdown`, `internal`, else `other`. It is what
a notice's subject says and, with the sender, what the window counts by.

`NoticeWindow` lets one notice a minute through per key (a sender and a reason class); the
failures it holds back meanwhile are counted, and the next notice of that key carries the
count and the first few of their request ids. It is thread safe (the sending threads share
it), reads an injected clock, and keeps at most `max_keys` keys, forgetting the one whose
last notice is oldest.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

INTERVAL = 60.0  # seconds: at most one notice per key in this time
MAX_KEYS = 4096  # senders x reason classes; a senders file rarely names more than a few dozen
KEEP_IDS = 10  # request ids of held-back failures a notice lists; the rest only counted

REASON_CLASSES = (
    "refused",
    "login",
    "tls",
    "transient",
    "possibly-delivered",
    "smtputf8",
    "rejected",
    "sender-removed",
    "shutdown",
    "internal",
    "other",
)

_POSSIBLY_DELIVERED_SUFFIX = "; an earlier attempt was possibly delivered (same Message-ID)"
_AFTER_ATTEMPTS = re.compile(r" \(after \d+ attempts\)")
_PERMANENT_REPLY = re.compile(r"5\d\d\b")
# First match wins: a request that may have reached its recipients says so before anything
# else, and the texts of the permanent failures before the attempts-used-up suffix.
_PREFIXES = (
    ("refused", ("every recipient was refused: ",)),
    ("login", ("login refused: ", "server offers no AUTH")),
    ("tls", ("TLS certificate not trusted: ", "server does not offer STARTTLS")),
    ("smtputf8", ("server does not support SMTPUTF8",)),
)


def reason_class(error: str | None) -> str:
    """The kind of a failed request's `error` (one of REASON_CLASSES)."""
    if not error:
        return "other"
    if error == "shutdown before send":
        return "shutdown"
    if error == "its sender is no longer configured":
        return "sender-removed"
    if error.startswith("internal error: "):
        return "internal"
    if error.startswith("possibly delivered: ") or error.endswith(_POSSIBLY_DELIVERED_SUFFIX):
        return "possibly-delivered"
    for kind, prefixes in _PREFIXES:
        if error.startswith(prefixes):
            return kind
    if _AFTER_ATTEMPTS.search(error):
        return "transient"
    if _PERMANENT_REPLY.match(error):  # a 5xx at MAIL FROM, DATA or the end of DATA
        return "rejected"
    return "other"


@dataclass(frozen=True, slots=True)
class HeldBack:
    """Failures of one key held back since its last notice: how many, and the first ids."""

    count: int = 0
    request_ids: tuple[str, ...] = ()


@dataclass(slots=True)
class _Key:
    last_notice: float | None = None  # clock time; None: the next failure gets a notice
    count: int = 0
    request_ids: list[str] = field(default_factory=list)

    def hold(self, count: int, earlier: list[str], later: list[str]) -> None:
        """Count `count` more failures; ids are kept in order, the first KEEP_IDS of them."""
        self.count += count
        self.request_ids = [*earlier, *self.request_ids, *later][:KEEP_IDS]


class NoticeWindow:
    """At most one notice per key every `interval` seconds; the rest counted for the next."""

    def __init__(
        self,
        interval: float = INTERVAL,
        max_keys: int = MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self.clock = clock
        self._keys: OrderedDict[tuple[str, str], _Key] = OrderedDict()  # oldest notice first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)

    def admit(self, key: tuple[str, str], request_id: str) -> HeldBack | None:
        """A failure of `key`: what its notice carries when one goes now, None when held back."""
        now = self.clock()
        with self._lock:
            state = self._keys.get(key)
            if state is None:
                state = self._keys[key] = _Key()
                self._bound()
            if state.last_notice is not None and now - state.last_notice < self.interval:
                state.hold(1, [], [request_id])
                return None
            held = HeldBack(state.count, tuple(state.request_ids))
            state.last_notice, state.count, state.request_ids = now, 0, []
            self._keys.move_to_end(key)
            return held

    def give_back(self, key: tuple[str, str], request_id: str, held: HeldBack) -> None:
        """A notice admitted but not sent: its failure and what it carried count toward the
        next notice of `key`, which goes at the next failure (the admin heard nothing)."""
        with self._lock:
            state = self._keys.get(key)
            if state is None:
                state = self._keys[key] = _Key()
                self._bound()
            # They came before any failure held back since the notice was admitted.
            state.hold(held.count + 1, [*held.request_ids, request_id], [])
            state.last_notice = None

    def _bound(self) -> None:
        while len(self._keys) > self.max_keys:
            (sender, kind), dropped = self._keys.popitem(last=False)
            if dropped.count:
                logger.warning(
                    "failure notices: %d held-back failures of %s (%s) forgotten: more than "
                    "%d sender and reason pairs",
                    dropped.count,
                    sender,
                    kind,
                    self.max_keys,
                )
