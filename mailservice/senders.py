"""API keys and the sender identity each one sends as (API.md section 2).

`load_senders(settings)` reads `data.csv` (columns `key,email,app_password`, optionally
`smtp_host,smtp_port,smtp_security,name,jwt_secret` and the account's protection
`rate,daily_limit,smtp_host2,smtp_port2`) or, when SENDERS_FILE ends in `.json`, seed 000's
`credentials.json` (`smtp_host,smtp_port,user,password`: one sender, whose API key is
CREDENTIALS_KEY). `SenderDirectory.authenticate()` finds the sender of
a presented key in constant time: keys are looked up by their SHA-256 digest and the digest is
confirmed with `hmac.compare_digest`, so timing says nothing about how much of a key matched.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from email_validator import EmailNotValidError

from mailservice.addresses import validate_address
from mailservice.config import SECURITY_MODES, Settings
from mailservice.errors import ConfigError
from mailservice.sender_limits import (
    CREDENTIALS_OPTIONAL,
    Rate,
    parse_port,
    protection,
)

REQUIRED_COLUMNS = ("key", "email", "app_password")
OPTIONAL_COLUMNS = (
    "smtp_host", "smtp_port", "smtp_security", "name", "jwt_secret",
    "rate", "daily_limit", "smtp_host2", "smtp_port2",
)  # fmt: skip
CREDENTIALS_FIELDS = ("smtp_host", "smtp_port", "user", "password")
IMPLICIT_TLS_PORT = 465


@dataclass(frozen=True, slots=True)
class Sender:
    """One API key's sender: From address, SMTP login and server."""

    email: str
    password: str = field(repr=False)
    smtp_host: str
    smtp_port: int
    smtp_security: str
    name: str = ""
    # A secret of this sender's own for HS256 JWTs its clients sign (the older FastAPI services'
    # clients); empty: such a JWT verifies under the API key itself.
    jwt_secret: str = field(default="", repr=False)
    # The account's own limits (delivery/account_gate.py): None, unlimited.
    rate: Rate | None = None
    daily_limit: int | None = None
    # A second SMTP server for the same login (relay failover); empty host: none.
    smtp_host2: str = ""
    smtp_port2: int = 0

    @property
    def account(self) -> str:
        """The SMTP account this sender sends through (its login): what pacing, the sender
        breaker and the suppression list are kept per. Keys that share an address share it."""
        return self.email.lower()

    @property
    def domain(self) -> str:
        return self.email.rpartition("@")[2]

    def is_address(self, candidate: str) -> bool:
        """True when `candidate` is this sender's address (normalised; domain in any case)."""
        try:
            normalised = validate_address(candidate, special_use=True).normalized
        except EmailNotValidError:
            return False
        local, _, domain = normalised.rpartition("@")
        own_local, _, own_domain = self.email.rpartition("@")
        return local == own_local and domain.casefold() == own_domain.casefold()


def key_digest(key: str) -> bytes:
    """The SHA-256 digest a key is known by: the directory keeps no key in clear."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class SenderDirectory:
    """Maps API keys to senders; never shows a key. Keys are looked up by digest; one is kept
    in clear only as the JWT secret of a sender without a `jwt_secret` (`jwt_secrets()`)."""

    def __init__(self, entries: Iterable[tuple[str, Sender]]) -> None:
        self._by_digest: dict[bytes, tuple[bytes, Sender]] = {}
        self._by_email: dict[str, Sender] = {}
        # An HS256 JWT's signature can only be checked with the secret itself (its jwt_secret,
        # else its API key), so these stay in memory; nothing shows them (see __repr__).
        self._jwt_secrets: dict[bytes, bytes] = {}
        for key, sender in entries:
            digest = key_digest(key)
            if digest in self._by_digest:
                raise ConfigError("the senders file lists the same key twice")
            self._by_digest[digest] = (digest, sender)
            self._by_email.setdefault(sender.email.lower(), sender)
            secret = (sender.jwt_secret or key).encode("utf-8", "surrogatepass")
            if secret in self._jwt_secrets:
                # A JWT signed with it could not say which of the two sends.
                raise ConfigError(
                    f"the senders file gives {sender.email} the same JWT secret (jwt_secret, "
                    "else the key) as another sender"
                )
            self._jwt_secrets[secret] = digest

    def __len__(self) -> int:
        return len(self._by_digest)

    def __repr__(self) -> str:
        return f"SenderDirectory({len(self)} keys)"

    def authenticate(self, key: str | None) -> Sender | None:
        """The sender of this key, or None for a missing or unknown key."""
        if not key:
            return None
        return self.by_key_digest(key_digest(key))

    def by_key_digest(self, digest: bytes) -> Sender | None:
        """The sender of the key with this digest (see `key_digest`), or None."""
        stored_digest, sender = self._by_digest.get(digest, (b"\0" * 32, None))
        if hmac.compare_digest(digest, stored_digest):
            return sender
        return None

    def key_digests(self) -> list[bytes]:
        """The digests of every key (for tokens that name a key without holding it)."""
        return list(self._by_digest)

    def jwt_secrets(self) -> list[tuple[bytes, bytes]]:
        """(secret, key digest) of every sender: the secret an HS256 JWT of its clients is
        signed with, and the digest of the key it stands for (`api/jwt_auth`)."""
        return list(self._jwt_secrets.items())

    def servers(self) -> set[tuple[str, int]]:
        """The SMTP servers (host, port) the senders send through."""
        return {(s.smtp_host, s.smtp_port) for _, s in self._by_digest.values()}

    def accounts(self) -> list[str]:
        """Every sender's SMTP account (`Sender.account`), once each."""
        return sorted({sender.account for _, sender in self._by_digest.values()})

    def senders(self) -> list[Sender]:
        """Every distinct sender once, in the file's order (keys may share one)."""
        return list(dict.fromkeys(sender for _, sender in self._by_digest.values()))

    def by_email(self, email: str) -> Sender | None:
        """The sender whose address this is (used to resume recorded requests)."""
        return self._by_email.get(email.lower())


def _normalise_email(raw: str, where: str) -> str:
    # Special-use domains (`.local`, `.internal`, `.test`) are allowed: the operator chose the
    # sender, and internal relays use them.
    try:
        return validate_address(raw, special_use=True).normalized
    except EmailNotValidError as exc:
        raise ConfigError(f"{where}: email {raw!r} is not a valid address ({exc})") from exc


def _row_sender(row: dict[str, str], where: str, settings: Settings) -> tuple[str, Sender]:
    key = (row.get("key") or "").strip()
    if not key:
        raise ConfigError(f"{where}: the key is empty")
    email = _normalise_email((row.get("email") or "").strip(), where)
    security = (row.get("smtp_security") or "").strip().lower() or settings.smtp_security
    if security not in SECURITY_MODES:
        raise ConfigError(f"{where}: smtp_security must be one of {', '.join(SECURITY_MODES)}")
    port_text = (row.get("smtp_port") or "").strip()
    port = parse_port(port_text, where, "smtp_port") if port_text else settings.smtp_port
    name = (row.get("name") or "").strip()
    if any(ch in name for ch in "\r\n\0"):
        raise ConfigError(f"{where}: name holds a line break")
    sender = Sender(
        email=email,
        password=row.get("app_password") or "",
        smtp_host=(row.get("smtp_host") or "").strip() or settings.smtp_host,
        smtp_port=port,
        smtp_security=security,
        name=name,
        jwt_secret=(row.get("jwt_secret") or "").strip(),
        **protection(row, where, port),
    )
    return key, sender


def load_senders(settings: Settings) -> SenderDirectory:
    """Read `settings.senders_file`; raise ConfigError naming the file on any problem."""
    path = Path(settings.senders_file)
    if path.suffix.lower() == ".json":
        return _load_credentials_json(path, settings)
    return _load_csv(path, settings)


def _load_csv(path: Path, settings: Settings) -> SenderDirectory:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in reader.fieldnames or []]
            missing = [c for c in REQUIRED_COLUMNS if c not in columns]
            if missing:
                raise ConfigError(
                    f"senders file {path}: missing column(s) {', '.join(missing)}; "
                    f"expected a header line 'key,email,app_password'"
                )
            reader.fieldnames = columns
            entries = [
                _row_sender(row, f"senders file {path}, line {reader.line_num}", settings)
                for row in reader
                if any((v or "").strip() for v in row.values() if isinstance(v, str))
            ]
    except FileNotFoundError as exc:
        raise ConfigError(f"senders file {path} not found (set SENDERS_FILE)") from exc
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"senders file {path} cannot be read: {exc}") from exc
    if not entries:
        raise ConfigError(f"senders file {path} has no sender rows")
    try:
        return SenderDirectory(entries)
    except ConfigError as exc:  # a duplicate key: say which file holds it
        raise ConfigError(f"senders file {path}: {exc}") from exc


def _load_credentials_json(path: Path, settings: Settings) -> SenderDirectory:
    """Seed 000's credentials.json: one sender, whose API key is CREDENTIALS_KEY."""
    where = f"senders file {path}"
    if not settings.credentials_key:
        raise ConfigError(
            f"{where} is a credentials.json file: set CREDENTIALS_KEY to the API key "
            "that sends as its user"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{where} not found (set SENDERS_FILE)") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where} cannot be read: {exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must hold one JSON object with {', '.join(CREDENTIALS_FIELDS)}")
    unknown = sorted(set(data) - set(CREDENTIALS_FIELDS) - set(CREDENTIALS_OPTIONAL))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
    for name in ("user", "password"):
        if not isinstance(data.get(name), str) or not data[name]:
            raise ConfigError(f"{where}: {name} must be a non-empty string")
    host, port = data.get("smtp_host", settings.smtp_host), data.get("smtp_port")
    if not isinstance(host, str) or not host.strip():
        raise ConfigError(f"{where}: smtp_host must be a non-empty string")
    if port is None:
        port = settings.smtp_port
    elif isinstance(port, str) and port.strip().isdigit():
        port = int(port)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError(f"{where}: smtp_port must be a port number, 1 to 65535")
    sender = Sender(
        email=_normalise_email(data["user"], where),
        password=data["password"],
        smtp_host=host.strip(),
        smtp_port=port,
        # The seed's client chose SMTP_SSL or STARTTLS by port; keep that choice.
        smtp_security="ssl" if port == IMPLICIT_TLS_PORT else settings.smtp_security,
        **protection(data, where, port),
    )
    return SenderDirectory([(settings.credentials_key, sender)])
