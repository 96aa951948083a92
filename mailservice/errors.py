"""The service's exception tree, in one place.

    ServiceError
    ├── ConfigError          bad setting or senders file; stops start-up with one line
    ├── StoreError           the status store failed or is unreachable (API answers 503)
    ├── GateError            the sender gate's Redis is unreachable: the process paces on
    │                        its own meanwhile (delivery/account_gate.py)
    ├── Unavailable          the process is full (QUEUE_MAX) or shutting down (API answers 503)
    ├── DeliveryError        one SMTP attempt failed
    │   ├── TransientDelivery    4xx, dropped connection, time-out: retried with backoff
    │   │   ├── ConnectFailed        no connection or no greeting: counts towards pausing
    │   │   │   │                    the server (dispatch_queue)
    │   │   │   └── TlsFailed        the TLS handshake broke off, or a 4xx to STARTTLS
    │   │   ├── TemporaryLoginFailure  a 4xx to AUTH (454 4.7.0 too many logins): the
    │   │   │                        account's, which the sender gate may pause
    │   │   └── PossiblyDelivered    no reply to the final "." of DATA: the server may have
    │   │                            the message; retried with the same Message-ID
    │   └── PermanentDelivery    5xx, refused login, bad TLS: failed at once
    │       ├── LoginRefused     the server refused the login, or offers no AUTH for it
    │       ├── TlsRejected      the server's certificate is not trusted, or a 5xx to STARTTLS
    │       └── StartTlsMissing  SMTP_SECURITY=starttls and the server offers no STARTTLS
    ├── WebhookError         one webhook try failed: non-2xx, time-out, refused connection,
    │                        TLS, or a host that does not resolve or resolves to an address
    │                        not allowed; retried on the webhook's own schedule
    └── ApiError             an HTTP problem answer (RFC 9457), raised by the request path

Messages never carry a key or password.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class ServiceError(Exception):
    """Root of every error the service raises on purpose."""


class ConfigError(ServiceError):
    """A setting or the senders file is missing or malformed."""


class StoreError(ServiceError):
    """The status store could not be read or written."""


class GateError(ServiceError):
    """The sender accounts' gate could not ask its backend (delivery/gate_backends.py)."""


class Unavailable(ServiceError):
    """The pool takes no more work now: its queue is full or it is draining."""


class DeliveryError(ServiceError):
    """One delivery attempt failed; `reason` is the SMTP code and text where there is one."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TransientDelivery(DeliveryError):
    """Worth retrying: a 4xx reply, a dropped connection or a time-out."""


class ConnectFailed(TransientDelivery):
    """The server could not be reached, or did not greet or finish the handshake in time."""


class TlsFailed(ConnectFailed):
    """The TLS handshake did not complete (a protocol error, a drop), or STARTTLS got a 4xx."""


class PossiblyDelivered(TransientDelivery):
    """The message was handed over but the reply to its final "." never came (time-out or a
    dropped connection): the server may have it, so a retry may make a copy."""


class PermanentDelivery(DeliveryError):
    """Not worth retrying: a 5xx reply, a refused login, a failed certificate check."""


# The kinds below say which step of the handshake failed, so that the sender check
# (delivery/sender_check.py) names the problem from the type, not from the message.
class TemporaryLoginFailure(TransientDelivery):
    """The server answered the login with a 4xx (`454 4.7.0 Too many login attempts`): the
    account, not the message, and not a wrong password; retried, and the sender gate may
    pause the account (delivery/account_gate.py)."""


class LoginRefused(PermanentDelivery):
    """The server refused the login (535), or offers no AUTH for it."""


class TlsRejected(PermanentDelivery):
    """The server's certificate is not trusted, or the server refused STARTTLS with a 5xx."""


class StartTlsMissing(PermanentDelivery):
    """SMTP_SECURITY is starttls and the server does not offer STARTTLS: no login is tried."""


class WebhookError(ServiceError):
    """One webhook try failed; `reason` says how (never the URL's path, query or the secret)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class FieldError:
    """One invalid field of a request body."""

    field: str
    message: str


@dataclass(eq=False)
class ApiError(ServiceError):
    """An HTTP error answered as application/problem+json."""

    status: int
    detail: str
    errors: list[FieldError] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.detail)
