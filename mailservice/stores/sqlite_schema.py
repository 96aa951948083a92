"""The SQLite store's file: its schema versions, their migrations, and opening it safely.

The file carries its schema version in `PRAGMA user_version`. `MIGRATIONS` lists every version
with the SQL that brings the version before it there; version 1 is the schema as first
deployed, whose files still say 0 (they predate the version number; migration 1 only creates
what is missing, so it finds them complete). `open_database()` switches the file to WAL and
applies the missing migrations in one `BEGIN IMMEDIATE` transaction, so that of several
processes starting at once on one file one migrates and the others wait, then find it done. A
file newer than this code stops start-up: the code cannot know what the newer schema means.

The next schema change is one more `(version, sql)` entry at the end of `MIGRATIONS`.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Iterator

from mailservice.errors import ConfigError

# Version 1: the schema of every file made before versioning (user_version 0).
SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY,
    status TEXT NOT NULL, sender TEXT NOT NULL, recipients TEXT NOT NULL,
    pending TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
    attempts TEXT NOT NULL, error TEXT NOT NULL, refused TEXT NOT NULL, owner TEXT NOT NULL,
    payload TEXT,
    expires_at REAL
);
CREATE INDEX IF NOT EXISTS requests_unfinished ON requests (owner) WHERE payload IS NOT NULL;
CREATE INDEX IF NOT EXISTS requests_expiry ON requests (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS owners (owner TEXT PRIMARY KEY, lease_until REAL NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (
    scope TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, request_id TEXT NOT NULL,
    expires_at REAL NOT NULL
);
"""

# (version, SQL from the version before it), in order. Append; never edit a released entry:
# files already at that version would not run it again.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (1, SCHEMA_V1),
    # Version 2: a request's metadata (the client's own, shown in its status).
    (2, "ALTER TABLE requests ADD COLUMN metadata TEXT NOT NULL DEFAULT '{}';"),
    # Version 3: tags, the request's webhook target and where its webhook stands; the index
    # finds the webhooks still to deliver (API.md section 4).
    (
        3,
        """
        ALTER TABLE requests ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
        ALTER TABLE requests ADD COLUMN callback_url TEXT NOT NULL DEFAULT '';
        ALTER TABLE requests ADD COLUMN webhook TEXT NOT NULL DEFAULT '';
        CREATE INDEX IF NOT EXISTS requests_webhook_pending ON requests (owner)
            WHERE webhook = 'pending';
        """,
    ),
    # Version 4: what the dashboard reads (API.md, Dashboard), each bounded. A request's
    # history; the recent list's index; counters by status and of final statuses per minute,
    # kept by triggers in the same statement as the write. The counts start from the statuses
    # the file holds (the one scan, at migration); per-minute counters older than two hours
    # go as new ones come.
    (
        4,
        """
        ALTER TABLE requests ADD COLUMN history TEXT NOT NULL DEFAULT '[]';
        CREATE INDEX IF NOT EXISTS requests_created ON requests (created_at, request_id);
        CREATE TABLE IF NOT EXISTS status_counts (status TEXT PRIMARY KEY, n INTEGER NOT NULL);
        INSERT INTO status_counts (status, n) SELECT status, count(*) FROM requests
            GROUP BY status;
        CREATE TABLE IF NOT EXISTS finished_per_minute (
            minute TEXT NOT NULL, status TEXT NOT NULL, n INTEGER NOT NULL,
            PRIMARY KEY (minute, status)
        ) WITHOUT ROWID;
        CREATE TRIGGER IF NOT EXISTS requests_counted AFTER INSERT ON requests BEGIN
            INSERT INTO status_counts (status, n) VALUES (NEW.status, 1)
                ON CONFLICT (status) DO UPDATE SET n = n + 1;
        END;
        CREATE TRIGGER IF NOT EXISTS requests_moved AFTER UPDATE OF status ON requests
            WHEN OLD.status <> NEW.status BEGIN
            UPDATE status_counts SET n = n - 1
                WHERE status = OLD.status AND OLD.status NOT IN ('sent', 'failed') AND n > 0;
            INSERT INTO status_counts (status, n) VALUES (NEW.status, 1)
                ON CONFLICT (status) DO UPDATE SET n = n + 1;
        END;
        CREATE TRIGGER IF NOT EXISTS requests_finished AFTER UPDATE OF status ON requests
            WHEN OLD.status NOT IN ('sent', 'failed') AND NEW.status IN ('sent', 'failed') BEGIN
            INSERT INTO finished_per_minute (minute, status, n)
                VALUES (substr(NEW.updated_at, 1, 16), NEW.status, 1)
                ON CONFLICT (minute, status) DO UPDATE SET n = n + 1;
            DELETE FROM finished_per_minute
                WHERE minute < strftime('%Y-%m-%dT%H:%M', NEW.updated_at, '-120 minutes');
        END;
        """,
    ),
    # Version 5: the statuses of issue 15 (scheduled, expired, canceled). The counters'
    # triggers take all four final statuses (recreated: a trigger cannot be altered). A
    # request's send_at and expires_at (stored as deliver_by: `expires_at` is the row's TTL).
    # A failed request's content, kept apart from `payload` (whose presence says unfinished)
    # until `kept_until`, found by its index when it is deleted. The scheduled requests by
    # send_at (ISO text in UTC, which sorts in time order), for due().
    (
        5,
        """
        ALTER TABLE requests ADD COLUMN send_at TEXT NOT NULL DEFAULT '';
        ALTER TABLE requests ADD COLUMN deliver_by TEXT NOT NULL DEFAULT '';
        ALTER TABLE requests ADD COLUMN kept_payload TEXT;
        ALTER TABLE requests ADD COLUMN kept_until REAL;
        CREATE INDEX IF NOT EXISTS requests_kept ON requests (kept_until)
            WHERE kept_until IS NOT NULL;
        CREATE INDEX IF NOT EXISTS requests_scheduled ON requests (send_at, request_id)
            WHERE status = 'scheduled';
        DROP TRIGGER IF EXISTS requests_moved;
        DROP TRIGGER IF EXISTS requests_finished;
        CREATE TRIGGER requests_moved AFTER UPDATE OF status ON requests
            WHEN OLD.status <> NEW.status BEGIN
            UPDATE status_counts SET n = n - 1
                WHERE status = OLD.status AND n > 0
                AND OLD.status NOT IN ('sent', 'failed', 'expired', 'canceled');
            INSERT INTO status_counts (status, n) VALUES (NEW.status, 1)
                ON CONFLICT (status) DO UPDATE SET n = n + 1;
        END;
        CREATE TRIGGER requests_finished AFTER UPDATE OF status ON requests
            WHEN OLD.status NOT IN ('sent', 'failed', 'expired', 'canceled')
            AND NEW.status IN ('sent', 'failed', 'expired', 'canceled') BEGIN
            INSERT INTO finished_per_minute (minute, status, n)
                VALUES (substr(NEW.updated_at, 1, 16), NEW.status, 1)
                ON CONFLICT (minute, status) DO UPDATE SET n = n + 1;
            DELETE FROM finished_per_minute
                WHERE minute < strftime('%Y-%m-%dT%H:%M', NEW.updated_at, '-120 minutes');
        END;
        """,
    ),
    # Version 6: each sender account's suppression list (API.md section 3, "Suppression
    # list"), in (account, address) order for its listing; times in epoch seconds, `until`
    # indexed for purge_expired().
    (
        6,
        """
        CREATE TABLE IF NOT EXISTS suppressions (
            account TEXT NOT NULL, address TEXT NOT NULL, reason TEXT NOT NULL,
            created_at REAL NOT NULL, until REAL NOT NULL,
            PRIMARY KEY (account, address)
        ) WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS suppressions_until ON suppressions (until);
        """,
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

# The first WAL switch of a new file needs an exclusive lock, and SQLite answers SQLITE_BUSY at
# once there instead of calling the busy handler: workers starting together retry it, spread
# out by jitter, for as long as the busy timeout would have waited.
WAL_FIRST_DELAY = 0.002
WAL_MAX_DELAY = 0.1
BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def open_database(path: str, timeout: float) -> sqlite3.Connection:
    """A connection to `path` in WAL mode at SCHEMA_VERSION; `timeout` bounds every lock wait.

    Raises sqlite3.Error or OSError when the file cannot be opened or migrated, ConfigError
    when it is newer than this code.
    """
    db = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        refuse_newer(path, user_version(db))  # before writing anything to a file not ours
        switch_to_wal(db, timeout)
        db.execute("PRAGMA synchronous=NORMAL")
        migrate(db, path)
    except BaseException:
        db.close()
        raise
    return db


def user_version(db: sqlite3.Connection) -> int:
    """The schema version the file says it has (0 for a new file, or one made before versions)."""
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def refuse_newer(path: str, version: int) -> None:
    """ConfigError when the file's schema is newer than any this code knows."""
    if version > SCHEMA_VERSION:
        raise ConfigError(
            f"STATUS_STORE_URL: SQLite file {path} has schema version {version}, newer than"
            f" version {SCHEMA_VERSION} that this release knows; run the release that wrote it"
        )


def switch_to_wal(db: sqlite3.Connection, timeout: float) -> str:
    """PRAGMA journal_mode=WAL, retried with a bounded backoff while another process holds the
    lock it needs; the mode the file ends in ("memory" for :memory:)."""
    deadline = time.monotonic() + timeout
    delay = WAL_FIRST_DELAY
    while True:
        try:
            return str(db.execute("PRAGMA journal_mode=WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # extended code -> primary
            if code not in BUSY_CODES or time.monotonic() >= deadline:
                raise
        time.sleep(delay * random.uniform(0.5, 1.0))
        delay = min(delay * 2, WAL_MAX_DELAY)


def migrate(db: sqlite3.Connection, path: str) -> int:
    """Bring the file to SCHEMA_VERSION in one transaction; the version it had before."""
    found = user_version(db)
    refuse_newer(path, found)
    if found == SCHEMA_VERSION:
        return found  # the usual start-up: no write lock taken
    # BEGIN IMMEDIATE waits under the busy timeout while another process migrates; the version
    # is read again under the lock, so the second one finds the work done and does nothing.
    db.execute("BEGIN IMMEDIATE")
    try:
        found = user_version(db)
        refuse_newer(path, found)
        for version, sql in MIGRATIONS:
            if version > found:
                for statement in statements(sql):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {int(version)}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return found


def statements(sql: str) -> Iterator[str]:
    """The statements of a migration one at a time: executescript() would COMMIT first and so
    break the one transaction. A ';' inside a string or a trigger body does not end one."""
    pending = ""
    for piece in sql.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip("; \t\n"):
                yield pending.strip()
            pending = ""
    if pending.strip("; \t\n"):
        raise ValueError(f"unfinished SQL statement in a migration: {pending!r}")
