"""One signed webhook POST to one URL, connected to an address that was checked (urllib3).

`addresses(host, port)` resolves a host (getaddrinfo); `refuse_private(host, found)` refuses
it when ANY address it resolved to is loopback, private, link-local, multicast, unspecified,
reserved or otherwise not public, an IPv4 address inside an IPv6 one (`::ffff:10.0.0.1`, 6to4,
Teredo, NAT64) counting as itself. The API checks a `callback_url` with both at send time;
`WebhookClient.post()` checks again on every try and connects to the address it checked:
`HTTPConnectionPool(ip, port)`, or `HTTPSConnectionPool(ip, port, server_hostname=host,
assert_hostname=host)` so that TLS still verifies the URL's host, with a `Host` header naming
it. A DNS answer that changes between the check and the connection (DNS rebinding) therefore
cannot reach an address the check refused. `allow_private` (WEBHOOK_ALLOW_PRIVATE) skips the
refusal, not the resolution.

A try is one POST: redirects are not followed (a 3xx is a failure), urllib3 retries nothing
(the notifier keeps its own schedule), and `timeout` seconds bound the whole try: the name
lookup waits at most that long (`NameLookup`, getaddrinfo on threads of its own), and a
`Watchdog` shuts the connection down at the try's deadline, however slowly the receiver answers
(`webhook_deadline`). The addresses of a host are tried in order while time is left, when one
cannot be connected to. At most MAX_ANSWER bytes of an answer's body are read. Anything but a
2xx answer raises WebhookError. Connections are kept per checked address, at most `pool_size`
each, for the next try to the same receiver.

Signature (API.md section 4): `X-Mail-Timestamp: <unix seconds>` and
`X-Mail-Signature: v1=<hex HMAC-SHA256 of "<timestamp>.<raw body>">` under WEBHOOK_SECRET, made
afresh for every try so that a receiver can refuse an old timestamp (a replay).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    NewConnectionError,
    ReadTimeoutError,
    SSLError,
)

from mailservice.errors import WebhookError
from mailservice.events.name_lookup import NameLookup
from mailservice.events.webhook_deadline import (
    Watchdog,
    WatchedHTTPConnectionPool,
    WatchedHTTPSConnectionPool,
    watching,
)

USER_AGENT = "mail-service/0.1.0 webhooks (urllib3)"
MAX_ANSWER = 4096  # bytes of an answer's body read (a receiver says little); past that, dropped
POOLS_MAX = 32  # receivers (by checked address) whose connections are kept
DEFAULT_PORTS = {"http": 80, "https": 443}
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# NAT64's well-known prefix (RFC 6052): 64:ff9b::a00:1 reaches 10.0.0.1 through a gateway.
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The `X-Mail-Signature` value: `v1=` and the hex HMAC-SHA256 of `<timestamp>.<body>`."""
    mac = hmac.new(secret.encode("utf-8"), b"%d." % timestamp + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def _embedded_ipv4(ip: IPAddress) -> Iterator[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries and would reach."""
    if isinstance(ip, ipaddress.IPv4Address):
        return
    if ip.ipv4_mapped is not None:
        yield ip.ipv4_mapped
    if ip.sixtofour is not None:
        yield ip.sixtofour
    if ip.teredo is not None:
        yield from ip.teredo
    if ip in NAT64:
        yield ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)


def not_allowed(ip: IPAddress) -> str | None:
    """Why `ip` may not be a webhook target (`a loopback address`...), or None when it may."""
    for inner in _embedded_ipv4(ip):
        if (reason := not_allowed(inner)) is not None:
            return reason
    # Most specific first: 169.254.169.254 (cloud metadata) is link-local before private.
    checks = (
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_reserved, "a reserved address"),
        (ip.is_private, "a private address"),
        # is_global also leaves out what no flag above names (100.64.0.0/10, shared NAT).
        (not ip.is_global, "not a public address"),
    )
    return next((reason for failed, reason in checks if failed), None)


def refuse_private(host: str, found: list[str]) -> None:
    """WebhookError naming the first of `found` that is not a public address."""
    for address in found:
        reason = not_allowed(ipaddress.ip_address(address))
        if reason is not None:
            if host.strip("[]") == address:
                raise WebhookError(f"{address} is {reason}")
            raise WebhookError(f"{host} resolves to {address}, {reason}")


def shown_target(url: str) -> str:
    """The URL as logs show it: scheme, host and port only (its path or query may hold a
    receiver's token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class WebhookClient:
    """Makes signed tries; `secret` is WEBHOOK_SECRET (never shown), `timeout` one try's bound.

    `ca_file` adds certificate authorities to the system's (tests; a receiver with a private CA).
    `lookup` resolves names within the time left (one per process, shared with the API's check).
    """

    def __init__(
        self,
        secret: str,
        timeout: float,
        allow_private: bool = False,
        *,
        ca_file: str | None = None,
        pool_size: int = 4,
        lookup: NameLookup | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret = secret
        self.timeout = timeout
        self.allow_private = allow_private
        self.ca_file = ca_file
        self.pool_size = pool_size
        self.lookup = lookup if lookup is not None else NameLookup()
        self._clock = clock
        self._pools: OrderedDict[tuple[str, str, int, str], urllib3.HTTPConnectionPool] = (
            OrderedDict()
        )
        self._lock = threading.Lock()

    @property
    def configured(self) -> bool:
        """Whether there is a secret to sign with (without one nothing is sent)."""
        return bool(self._secret)

    def __repr__(self) -> str:
        return f"WebhookClient(timeout={self.timeout}, allow_private={self.allow_private})"

    def post(self, url: str, body: bytes) -> int:
        """One signed try of `body` to `url`: the status of a 2xx answer; WebhookError else."""
        deadline = time.monotonic() + self.timeout
        parts = urlsplit(url)
        host, scheme = parts.hostname or "", parts.scheme.lower()
        port = parts.port or DEFAULT_PORTS[scheme]
        try:
            found = self.lookup.addresses(host, port, self.timeout)
        except TimeoutError as exc:  # a slow name server fails this try; the next asks again
            raise WebhookError(str(exc)) from exc
        except (socket.gaierror, UnicodeError) as exc:
            raise WebhookError(f"{host} does not resolve: {exc}") from exc
        if not self.allow_private:
            refuse_private(host, found)
        timestamp = int(self._clock())
        headers = {
            "Host": _host_header(host, port, scheme),
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Mail-Timestamp": str(timestamp),
            "X-Mail-Signature": signature(self._secret, timestamp, body),
        }
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        watchdog = Watchdog(deadline - time.monotonic())
        try:
            with watching(watchdog):
                receiver = (scheme, port, host)
                status = self._exchange(found, receiver, target, body, headers, watchdog, deadline)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            cut_off = watchdog.finish()  # the watchdog's shutdown shows up as any socket error
            raise WebhookError(self._late if cut_off else _describe(exc, self.timeout)) from exc
        except (UnicodeError, ValueError) as exc:  # a WEBHOOK_URL http.client cannot write
            raise WebhookError(f"the URL cannot be sent: {exc}") from exc
        finally:
            watchdog.finish()
        if 200 <= status < 300:
            return status
        if 300 <= status < 400:
            raise WebhookError(f"answered {status} (redirects are not followed)")
        raise WebhookError(f"answered {status}")

    @property
    def _late(self) -> str:
        return f"no answer within {self.timeout:g} s"

    def _exchange(
        self,
        found: list[str],
        receiver: tuple[str, int, str],
        target: str,
        body: bytes,
        headers: dict[str, str],
        watchdog: Watchdog,
        deadline: float,
    ) -> int:
        """The POST to the first of `found` that can be connected to: its answer's status,
        its body read (at most MAX_ANSWER bytes); WebhookError when none could be, or when the
        watchdog cut the answer off."""
        scheme, port, host = receiver
        reason = self._late
        for address in found:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            pool = self._pool(scheme, address, port, host)
            try:
                response = pool.urlopen(
                    "POST",
                    target,
                    body=body,
                    headers=headers,
                    retries=False,
                    redirect=False,
                    assert_same_host=False,
                    timeout=urllib3.Timeout(total=remaining),
                    preload_content=False,
                )
            except NewConnectionError as exc:  # refused, unreachable: the next address may do
                reason = f"cannot connect to {address}: {_cause(exc)}"
                continue
            except ConnectTimeoutError:
                reason = f"connecting to {address} timed out"
                continue
            try:
                rest = response.read(MAX_ANSWER + 1, decode_content=False)
            except BaseException:
                response.close()
                raise
            cut_off = watchdog.finish()  # before the connection goes back to the pool
            if cut_off or len(rest) > MAX_ANSWER:
                response.close()  # cut off, or talking on and on: its connection is not kept
            response.release_conn()
            if cut_off:
                raise WebhookError(self._late)
            return response.status
        raise WebhookError(reason)

    def _pool(self, scheme: str, address: str, port: int, host: str) -> urllib3.HTTPConnectionPool:
        key = (scheme, address, port, host)
        with self._lock:
            pool = self._pools.get(key)
            if pool is not None:
                self._pools.move_to_end(key)
                return pool
            if scheme == "https":
                pool = WatchedHTTPSConnectionPool(
                    address,
                    port,
                    maxsize=self.pool_size,
                    retries=False,
                    cert_reqs="CERT_REQUIRED",
                    ca_certs=self.ca_file,
                    server_hostname=host,
                    assert_hostname=host,
                )
            else:
                pool = WatchedHTTPConnectionPool(
                    address, port, maxsize=self.pool_size, retries=False
                )
            self._pools[key] = pool
            evicted = self._pools.popitem(last=False)[1] if len(self._pools) > POOLS_MAX else None
        if evicted is not None:
            evicted.close()
        return pool

    def close(self) -> None:
        """Close every kept connection."""
        with self._lock:
            pools, self._pools = list(self._pools.values()), OrderedDict()
        for pool in pools:
            pool.close()
        self.lookup.close()


def _host_header(host: str, port: int, scheme: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port == DEFAULT_PORTS[scheme] else f"{shown}:{port}"


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return str(cause or exc)


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, ReadTimeoutError | TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, SSLError):
        return f"TLS failed: {exc}"
    return f"{type(exc).__name__}: {exc}"
