"""The sender check: every sender's SMTP servers connected to and logged in to, nothing sent.

`SenderCheck.run()` takes each distinct login of the senders file (address, server, security
mode and password: keys that share a sender are checked once) on the sender's server and, when
it has one, its second (`smtp_host2`), and runs `SmtpClient.check()` on each: the same
connect, TLS context (SMTP_CA_FILE), time-outs, EHLO name, STARTTLS and login as a send's new
connection, then QUIT, never MAIL FROM. Each login's result comes from the type of the error
(errors.py), never from its message: `LoginRefused` is `auth_failed`, `TlsFailed` and
`TlsRejected` are `tls_failed`, `StartTlsMissing` is `starttls_missing`, and every other
failure (no connection, no greeting, a 4xx or 5xx greeting, a time-out) is `unreachable`.

At most `WORKERS` logins are checked at once, on daemon threads, and the whole check ends at
`deadline` seconds (`check_deadline()`: twice SMTP_TIMEOUT), so that many dead servers cost
seconds, not minutes: a login still being checked then, or not yet started, is `unreachable`
with a detail that says so. One check runs at a time in a process: every check logs in to
every account, and a provider may lock an account that logs in too often.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from mailservice.config import Settings
from mailservice.delivery.smtp_client import SmtpClient, SmtpTarget
from mailservice.errors import (
    DeliveryError,
    LoginRefused,
    StartTlsMissing,
    TemporaryLoginFailure,
    TlsFailed,
    TlsRejected,
)
from mailservice.senders import SenderDirectory

logger = logging.getLogger(__name__)

WORKERS = 8  # logins checked at once


class CheckResult(StrEnum):
    OK = "ok"
    AUTH_FAILED = "auth_failed"
    TLS_FAILED = "tls_failed"
    UNREACHABLE = "unreachable"
    STARTTLS_MISSING = "starttls_missing"


# The first matching type names the problem; any other DeliveryError is UNREACHABLE.
PROBLEMS: tuple[tuple[type[DeliveryError] | tuple[type[DeliveryError], ...], CheckResult], ...] = (
    ((LoginRefused, TemporaryLoginFailure), CheckResult.AUTH_FAILED),
    (StartTlsMissing, CheckResult.STARTTLS_MISSING),
    ((TlsFailed, TlsRejected), CheckResult.TLS_FAILED),
)


def check_deadline(settings: Settings) -> float:
    """How long a whole check may take: a login whose server hangs at one step takes
    SMTP_TIMEOUT, and twice that lets a second round of WORKERS such logins end too."""
    return 2 * settings.smtp_timeout


@dataclass(frozen=True, slots=True)
class ServerCheck:
    """One login on one server, and what came of it; `detail` never holds the password."""

    sender: str
    server: str  # host:port, an IPv6 host in brackets
    security: str
    result: CheckResult
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {
            "sender": self.sender,
            "server": self.server,
            "security": self.security,
            "result": str(self.result),
            "detail": self.detail,
        }

    def line(self) -> str:
        """The line `python mail_server.py --check` prints."""
        return f"{self.result:<16} {self.sender} at {self.server} ({self.security}): {self.detail}"


@dataclass(frozen=True, slots=True)
class CheckReport:
    checks: tuple[ServerCheck, ...]

    @property
    def ok(self) -> bool:
        return all(check.result is CheckResult.OK for check in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {"senders": [check.as_dict() for check in self.checks], "ok": self.ok}


def server_name(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def login_targets(senders: SenderDirectory) -> list[SmtpTarget]:
    """Each distinct login to check, in the file's order: every sender's server and its
    second server, each (server, login, password) once."""
    targets: list[SmtpTarget] = []
    for sender in senders.senders():
        targets.append(SmtpTarget.for_sender(sender))
        if (second := SmtpTarget.second_for(sender)) is not None:
            targets.append(second)
    return list(dict.fromkeys(targets))


def _redacted(target: SmtpTarget, text: str) -> str:
    """`text` without the password, plain or as AUTH PLAIN and AUTH LOGIN send it: a server
    that echoes what it could not decode must not put it in an answer."""
    if not target.password:
        return text
    plain = f"\0{target.username}\0{target.password}".encode("utf-8", "surrogatepass")
    password = target.password.encode("utf-8", "surrogatepass")
    for secret in (target.password, *(base64.b64encode(b).decode() for b in (plain, password))):
        text = text.replace(secret, "***")
    return text


def _checked(target: SmtpTarget, result: CheckResult, detail: str) -> ServerCheck:
    return ServerCheck(
        target.username,
        server_name(target.host, target.port),
        target.security,
        result,
        _redacted(target, detail),
    )


def check_one(client: SmtpClient, target: SmtpTarget) -> ServerCheck:
    """One login checked: what `client.check()` said, or the problem its error names."""
    try:
        detail = client.check(target)
    except DeliveryError as exc:
        result = next((r for kinds, r in PROBLEMS if isinstance(exc, kinds)), None)
        return _checked(target, result or CheckResult.UNREACHABLE, exc.reason)
    return _checked(target, CheckResult.OK, detail)


class SenderCheck:
    """Checks the logins of a senders file with one SmtpClient (the process's own, or one
    built from the settings by the command line); one check at a time."""

    def __init__(
        self,
        senders: SenderDirectory,
        client: SmtpClient,
        deadline: float,
        workers: int = WORKERS,
    ) -> None:
        self.senders = senders
        self.client = client
        self.deadline = deadline
        self.workers = workers
        self._one_at_a_time = threading.Lock()

    def run(self) -> CheckReport:
        """Every login checked, or reported `unreachable` once `deadline` seconds are over."""
        with self._one_at_a_time:
            report = CheckReport(self._run(login_targets(self.senders)))
        problems = sum(check.result is not CheckResult.OK for check in report.checks)
        logger.info("sender check: %d login(s), %d problem(s)", len(report.checks), problems)
        return report

    def _run(self, targets: list[SmtpTarget]) -> tuple[ServerCheck, ...]:
        pending = deque(enumerate(targets))
        started: set[int] = set()
        results: dict[int, ServerCheck] = {}
        changed = threading.Condition()

        def work() -> None:
            while True:
                with changed:
                    if not pending:
                        return
                    index, target = pending.popleft()
                    started.add(index)
                try:
                    result = check_one(self.client, target)
                except Exception as exc:  # this thread's boundary: a bug must not hang the check
                    logger.exception("sender check of %s failed unexpectedly", target.username)
                    result = _checked(
                        target, CheckResult.UNREACHABLE, f"internal error: {type(exc).__name__}"
                    )
                with changed:
                    results[index] = result
                    changed.notify_all()

        # Daemon threads: a login that hangs past the deadline goes on alone until its own
        # socket time-out, and must not hold up the answer or the command's exit.
        for number in range(min(self.workers, len(targets))):
            threading.Thread(target=work, name=f"sender-check-{number}", daemon=True).start()
        end = time.monotonic() + self.deadline
        with changed:
            while len(results) < len(targets):
                left = end - time.monotonic()
                if left <= 0:
                    break
                changed.wait(left)
            pending.clear()  # nothing new starts past the deadline
            done, begun = dict(results), set(started)
        late = {
            True: f"no answer within the check's {self.deadline:g} s",
            False: f"not checked: the check's {self.deadline:g} s ran out first",
        }
        return tuple(
            done.get(index) or _checked(target, CheckResult.UNREACHABLE, late[index in begun])
            for index, target in enumerate(targets)
        )
