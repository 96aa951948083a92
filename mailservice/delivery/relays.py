"""Relay failover: which of a sender's two SMTP servers one attempt's transaction goes to.

A sender may name a second server (`smtp_host2`, `smtp_port2`) for the same login and security.
`Relays` keeps, per process and per first server, whether that first server is taken for down,
and `send()` runs one transaction through the right server:

- Normally the first. When connecting to it fails (`ConnectFailed`: unreachable, refused, no
  greeting, a 4xx at connect or in the handshake), nothing was handed over, so the same attempt
  tries the second at once, and later messages go straight to the second for
  `failback_seconds`. Senders that share a first server share that: none of them waits for a
  connect time-out to a server another one just found down.
- When the time is up, one message alone probes the first (the others keep going to the second
  until it has its answer): connecting ends the failover, failing starts another period.
- A second server that fails to connect while it is the current one: the first is tried (it may
  be back). Both failing is the attempt's `ConnectFailed`, naming both: a normal retry, and the
  dispatch queue's connect breaker counts it as the server not answering.
- A failure once connected (a reply to MAIL FROM, RCPT or DATA, a refused login, a dropped
  connection) is that server's answer: no failover.

The move to the second server and the move back are logged once each (host:port, never the
login), and each move to the second calls `on_failover` (the `mail_relay_failovers` counter).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from mailservice.delivery.smtp_client import DeliveryOutcome, SmtpClient, SmtpTarget
from mailservice.errors import ConnectFailed, DeliveryError
from mailservice.senders import Sender

logger = logging.getLogger(__name__)

Server = tuple[str, int]


@dataclass(slots=True)
class _Down:
    """A first server taken for down: mail for it goes to the second until `until`."""

    until: float
    probing: bool = False  # the one message sent to the first after `until` is on its way


@dataclass(frozen=True, slots=True)
class _Route:
    """Where one attempt goes first, and whether that is the probe of a down first server."""

    second_first: bool
    probe: bool


def _name(target: SmtpTarget) -> str:
    return f"{target.host}:{target.port}"


class Relays:
    """Per process: each first server's failover state; thread safe (one lock)."""

    def __init__(
        self,
        failback_seconds: float = 300.0,
        *,
        on_failover: Callable[[], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failback_seconds = failback_seconds
        self._on_failover = on_failover
        self._clock = clock
        self._down: dict[Server, _Down] = {}
        self._lock = threading.Lock()

    def failed_over(self, sender: Sender) -> bool:
        """True while `sender`'s first server is taken for down (its mail goes to the second)."""
        with self._lock:
            return (sender.smtp_host, sender.smtp_port) in self._down

    def send(
        self,
        smtp: SmtpClient,
        sender: Sender,
        mail_from: str,
        recipients: list[str],
        data: bytes,
        smtputf8: bool,
    ) -> DeliveryOutcome:
        """One SMTP transaction through `sender`'s current server (SmtpClient.send's errors)."""
        first, second = SmtpTarget.for_sender(sender), SmtpTarget.second_for(sender)
        if second is None:
            return smtp.send(first, mail_from, recipients, data, smtputf8)

        def through(target: SmtpTarget) -> DeliveryOutcome:
            return smtp.send(target, mail_from, recipients, data, smtputf8)

        route = self._route((first.host, first.port))
        if route.second_first:
            try:
                return through(second)
            except ConnectFailed as exc:
                second_error = exc
            try:  # the second is down too: the first may be back
                outcome = through(first)
            except ConnectFailed as exc:
                raise _both(first, exc, second, second_error) from exc
            except DeliveryError:  # connected, then failed: the first answers again
                self._first_back(first, second)
                raise
            self._first_back(first, second)
            return outcome
        try:
            outcome = through(first)
        except ConnectFailed as exc:
            self._first_down(first, second, route.probe, exc)
            first_error = exc
        except DeliveryError:  # connected, then failed: the first answered
            if route.probe:
                self._first_back(first, second)
            raise
        except BaseException:  # a bug: the probe must not stay out for ever
            if route.probe:
                self._probe_lost(first)
            raise
        else:
            if route.probe:
                self._first_back(first, second)
            return outcome
        try:  # nothing was handed over: the same attempt goes on to the second
            return through(second)
        except ConnectFailed as exc:
            raise _both(first, first_error, second, exc) from exc

    def _route(self, key: Server) -> _Route:
        with self._lock:
            down = self._down.get(key)
            if down is None:
                return _Route(second_first=False, probe=False)
            if not down.probing and self._clock() >= down.until:
                down.probing = True
                return _Route(second_first=False, probe=True)
            return _Route(second_first=True, probe=False)

    def _first_down(
        self, first: SmtpTarget, second: SmtpTarget, probe: bool, exc: ConnectFailed
    ) -> None:
        key = (first.host, first.port)
        with self._lock:
            down = self._down.get(key)
            until = self._clock() + self.failback_seconds
            if down is None:
                self._down[key] = _Down(until)
            elif probe:
                down.until, down.probing = until, False
            else:  # another thread found it down first, and said so
                return
        if probe:
            logger.info(
                "SMTP server %s still cannot be reached (%s); sending through the second "
                "server %s for another %gs",
                _name(first),
                exc.reason,
                _name(second),
                self.failback_seconds,
            )
            return
        logger.warning(
            "SMTP server %s cannot be reached (%s): delivery moves to the second server %s for %gs",
            _name(first),
            exc.reason,
            _name(second),
            self.failback_seconds,
        )
        if self._on_failover is not None:
            self._on_failover()

    def _first_back(self, first: SmtpTarget, second: SmtpTarget) -> None:
        with self._lock:
            if self._down.pop((first.host, first.port), None) is None:
                return  # another thread found it back already
        logger.warning(
            "SMTP server %s answers again: delivery moves back to it from %s",
            _name(first),
            _name(second),
        )

    def _probe_lost(self, first: SmtpTarget) -> None:
        with self._lock:
            down = self._down.get((first.host, first.port))
            if down is not None:
                down.probing = False


def _both(
    first: SmtpTarget, first_error: ConnectFailed, second: SmtpTarget, second_error: ConnectFailed
) -> ConnectFailed:
    return ConnectFailed(
        f"{first_error.reason} (first server {_name(first)}); "
        f"{second_error.reason} (second server {_name(second)})"
    )
