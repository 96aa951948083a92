"""The parsers of the settings' values (config.py's table): each takes the variable's text and
gives the value, or raises ValueError saying what is wrong, which config.py turns into a
ConfigError naming the variable."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import TypeVar

from mailservice.addresses import validate_address

T = TypeVar("T")


def positive(kind: Callable[[str], T], allow_zero: bool = False) -> Callable[[str], T]:
    def parse(raw: str) -> T:
        value = kind(raw)
        # float() takes "nan" and "inf": an unbounded timeout or backoff, or one that never
        # compares, so both are refused.
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("must be a finite number")
        if value < 0 or (value == 0 and not allow_zero):  # type: ignore[operator]
            raise ValueError("must be positive")
        return value

    return parse


def or_zero(parse: Callable[[str], T]) -> Callable[[str], T | int]:
    """An empty value means 0 (the setting's automatic default)."""
    return lambda raw: parse(raw) if raw.strip() else 0


def one_of(choices: tuple[str, ...], fold: Callable[[str], str]) -> Callable[[str], str]:
    """One of `choices`, in any case (`fold` gives the spelling kept)."""

    def parse(raw: str) -> str:
        value = fold(raw.strip())
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return parse


def port_number(raw: str) -> int:
    value = int(raw)
    if not 0 < value < 65536:
        raise ValueError("must be a port number, 1 to 65535")
    return value


def port_or_zero(raw: str) -> int:
    return 0 if raw.strip() == "0" else port_number(raw)


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def switch(raw: str) -> bool:
    """On or off, in the usual spellings. Empty means the default, on: before these were
    checked, any value but 0 meant on, an empty one included."""
    value = raw.strip().lower()
    if value in TRUE_WORDS or not value:
        return True
    if value in FALSE_WORDS:
        return False
    # Refused rather than taken as on: "of" or "disabled" must not quietly mean the opposite.
    raise ValueError(f"must be one of {', '.join(TRUE_WORDS)} or {', '.join(FALSE_WORDS)}")


def off_switch(raw: str) -> bool:
    """A switch that is off unless set: empty means off."""
    return bool(raw.strip()) and switch(raw)


def host_port(raw: str) -> str:
    """`host:port` (IPv6 as `[::1]:port`), or empty for off."""
    value = raw.strip()
    if not value:
        return ""
    host, sep, port = value.rpartition(":")
    if not sep or not host.strip("[]"):
        raise ValueError("must be host:port, e.g. 127.0.0.1:2525")
    port_number(port)
    return value


def listen_address(value: str) -> tuple[str, int]:
    """(host, port) of a `host:port` setting checked by `host_port`."""
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def rate_limit(raw: str) -> str:
    value = raw.strip()
    if value:
        from limits import parse_many

        parse_many(value)  # raises ValueError on a malformed limit string
    return value


GATEWAY_DOMAIN = re.compile(r"(?=.{4,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")


def sms_provider_key(name: str) -> str:
    """A carrier's name as looked up: letters and digits, case-folded (`AT&T`, `At&T` and
    `att` are one carrier, `T-Mobile` is `tmobile`)."""
    return "".join(ch for ch in name.casefold() if ch.isalnum())


def parse_sms_gateways(raw: str) -> dict[str, str]:
    """SMS_GATEWAYS (`provider=gateway.domain,...`) as {provider key: domain}; ValueError
    naming the first bad entry. Empty: no entries."""
    gateways: dict[str, str] = {}
    if not raw.strip():
        return gateways
    for entry in raw.split(","):
        name, sep, domain = entry.partition("=")
        key, domain = sms_provider_key(name), domain.strip().lower()
        if not sep or not key:
            raise ValueError(f"entry {entry.strip()!r} is not provider=gateway.domain")
        if not GATEWAY_DOMAIN.fullmatch(domain):
            raise ValueError(f"{domain!r} (for {name.strip()!r}) is not a domain name")
        if key in gateways:
            raise ValueError(f"provider {name.strip()!r} is given twice")
        gateways[key] = domain
    return gateways


def sms_gateways(raw: str) -> str:
    parse_sms_gateways(raw)
    return raw.strip()


def http_url(raw: str) -> str:
    """Empty, or an absolute http(s) URL with a host (a webhook target)."""
    value = raw.strip()
    if value and not re.fullmatch(r"https?://[^/?#\s@]+([/?#]\S*)?", value, re.IGNORECASE):
        raise ValueError("must be an http:// or https:// URL with a host")
    return value


def admin_email(raw: str) -> str:
    value = raw.strip()
    if value:
        try:
            validate_address(value, special_use=True, strict=True)
        except ValueError as exc:  # EmailNotValidError is a ValueError
            raise ValueError(f"is not an email address: {exc}") from exc
    return value
