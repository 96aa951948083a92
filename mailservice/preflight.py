"""Start-up checks of what the settings name outside the process, made without opening it.

`check_named_resources()` finds the STATUS_STORE_URL or EMAIL_LOG that no process could open,
as a ConfigError naming the variable. The gunicorn master runs it once (gunicorn.conf.py), so
that such a value is the one configuration-error line instead of a traceback and "Worker failed
to boot" from every worker; `python mail_server.py` runs it too. It connects to nothing and
creates nothing: the master must not carry a Redis connection or a SQLite handle across fork(),
and a refused start-up leaves no file behind. What only opening can tell (Redis down, a broken
SQLite file, a full disk) is still found by each process's `create_app()`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from mailservice.config import Settings
from mailservice.errors import ConfigError
from mailservice.stores import STORE_BACKENDS


def check_named_resources(settings: Settings) -> None:
    """Raise ConfigError if STATUS_STORE_URL or EMAIL_LOG cannot work."""
    check_store_url(settings.status_store_url)
    check_email_log(settings.email_log)


def check_store_url(url: str) -> None:
    """The scheme is one of the registry's and the URL's own part parses as its backend
    would parse it. Messages never repeat a Redis URL, which may hold a password."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in STORE_BACKENDS:
        known = ", ".join(f"{name}://" for name in STORE_BACKENDS)
        raise ConfigError(f"STATUS_STORE_URL scheme {scheme!r} is not supported (use {known})")
    check = _URL_CHECKS.get(scheme)
    if check is not None:  # a backend added without a check here gets its scheme checked only
        check(url)


def _check_memory(url: str) -> None:
    # As mailservice.stores reads it: an empty max is the default, otherwise a number >= 1.
    raw = parse_qs(urlsplit(url).query).get("max", [None])[0]
    if raw is None:
        return
    try:
        max_finished = int(raw)
    except ValueError as exc:
        raise ConfigError(f"STATUS_STORE_URL {url!r}: max must be a number") from exc
    if max_finished < 1:
        raise ConfigError(f"STATUS_STORE_URL {url!r}: max must be positive")


def _check_sqlite(url: str) -> None:
    # As SqliteStatusStore.from_url reads it; the store makes missing folders, so a folder
    # that could be made is enough.
    path = urlsplit(url).path.removeprefix("/")
    if not path:
        raise ConfigError("STATUS_STORE_URL: give a file, e.g. sqlite:///mail.db")
    if path == ":memory:":
        return
    file = Path(path)
    problem = _folder_problem(file.parent, may_make=True) or _file_problem(file)
    if problem:
        raise ConfigError(f"STATUS_STORE_URL: cannot open SQLite file {path}: {problem}")


def _check_redis(url: str) -> None:
    from redis.connection import parse_url  # imported on use, as the registry does

    try:
        parse_url(url)
    except ValueError as exc:  # its messages name the bad part, never the password
        raise ConfigError(f"STATUS_STORE_URL: not a valid Redis URL: {exc}") from exc


_URL_CHECKS: dict[str, Callable[[str], None]] = {
    "memory": _check_memory,
    "sqlite": _check_sqlite,
    "redis": _check_redis,
    "rediss": _check_redis,
}


def check_email_log(path: str) -> None:
    """The request log's folder exists and is writable: RequestLog creates the file (and its
    rotated copies and lock file beside it) but not the folder."""
    if not path:
        raise ConfigError("EMAIL_LOG is empty: give a file, e.g. email_log.txt")
    file = Path(path)
    problem = _folder_problem(file.parent, may_make=False) or _file_problem(file)
    if problem:
        raise ConfigError(f"EMAIL_LOG={path!r} cannot be opened: {problem}")


def _folder_problem(folder: Path, may_make: bool) -> str | None:
    """Why files cannot be made in `folder`, or None; with `may_make`, a missing folder is
    judged by the nearest one that exists, where it would be made."""
    existing = folder
    while not existing.exists():
        if not may_make:
            return f"folder {folder} does not exist"
        if existing.parent == existing:  # "." when the working directory was removed
            return f"folder {folder} cannot be made"
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"folder {existing} is not writable"
    return None


def _file_problem(file: Path) -> str | None:
    """Why an existing `file` cannot be written, or None (also when it does not exist yet)."""
    if file.is_dir():
        return f"{file} is a folder"
    if file.exists() and not os.access(file, os.R_OK | os.W_OK):
        return f"{file} is not writable"
    return None
