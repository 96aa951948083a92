"""A sender row's account protection (API.md section 2): `rate`, `daily_limit` and the second
SMTP server `smtp_host2`/`smtp_port2`, parsed from `data.csv` or `credentials.json` into the
`Sender` fields the sender gate (delivery/account_gate.py) and relay failover
(delivery/relays.py) read. A bad value raises ConfigError naming the file, line and column."""

from __future__ import annotations

from dataclasses import dataclass

from mailservice.errors import ConfigError

# credentials.json may carry the account's protection too (API.md section 2).
CREDENTIALS_OPTIONAL = ("rate", "daily_limit", "smtp_host2", "smtp_port2")
RATE_UNITS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}


@dataclass(frozen=True, slots=True)
class Rate:
    """At most `count` messages in any window of `seconds` (`14/second`, `600/minute`)."""

    count: int
    seconds: float

    def __str__(self) -> str:
        unit = next(name for name, length in RATE_UNITS.items() if length == self.seconds)
        return f"{self.count}/{unit}"


def parse_rate(text: str, where: str, column: str) -> Rate:
    """`N/second`, `N/minute`, `N/hour` or `N/day` (a plural unit too), N at least 1."""
    count_text, slash, unit = text.strip().lower().partition("/")
    unit = unit.strip().removesuffix("s")
    if not slash or unit not in RATE_UNITS or not count_text.strip().isdigit():
        raise ConfigError(
            f"{where}: {column} {text!r} is not a rate like 14/second, 600/minute or 2000/day"
        )
    count = int(count_text)
    if count < 1:
        raise ConfigError(f"{where}: {column} must allow at least 1 message")
    return Rate(count, RATE_UNITS[unit])


def parse_daily_limit(text: str, where: str) -> int:
    """`2000` or `2000/day`: messages a day at most."""
    value = text.strip().lower()
    if "/" in value:
        rate = parse_rate(value, where, "daily_limit")
        if rate.seconds != RATE_UNITS["day"]:
            raise ConfigError(f"{where}: daily_limit {text!r} must be a count a day (2000/day)")
        return rate.count
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{where}: daily_limit {text!r} is not a count like 2000 or 2000/day")
    return int(value)


def parse_port(text: str, where: str, column: str) -> int:
    try:
        port = int(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: {column} {text!r} is not a number") from exc
    if not 0 < port < 65536:
        raise ConfigError(f"{where}: {column} {port} is out of range")
    return port


def protection(fields: dict[str, object], where: str, port: int) -> dict[str, object]:
    """The optional `rate`, `daily_limit`, `smtp_host2` and `smtp_port2` of a row or of
    credentials.json, as Sender fields. The second server's port defaults to the first's."""

    def text(name: str) -> str:
        value = fields.get(name)
        if value is None:
            return ""
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ConfigError(f"{where}: {name} must be a string")
        return str(value).strip()

    rate, daily, host2, port2 = (text(n) for n in CREDENTIALS_OPTIONAL)
    if port2 and not host2:
        raise ConfigError(f"{where}: smtp_port2 without smtp_host2")
    return {
        "rate": parse_rate(rate, where, "rate") if rate else None,
        "daily_limit": parse_daily_limit(daily, where) if daily else None,
        "smtp_host2": host2,
        "smtp_port2": (parse_port(port2, where, "smtp_port2") if port2 else port) if host2 else 0,
    }
