"""The SQLite file's schema version: old files migrated, newer ones refused, and several
processes or threads opening one new file at the same moment."""

from __future__ import annotations

import contextlib
import multiprocessing
import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from mailservice.errors import ConfigError
from mailservice.stores.codec import RECORD_FIELDS, record_to_fields
from mailservice.stores.contract import EmailStatus, IdempotencyClaim, StatusRecord, utcnow
from mailservice.stores.sqlite_schema import SCHEMA_VERSION
from mailservice.stores.sqlite_store import SqliteStatusStore

# The schema of the files deployed before versioning (user_version 0), frozen here on purpose:
# it is what files in the field hold, whatever the code's newest schema becomes.
SCHEMA_AS_DEPLOYED = """
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

# The record's columns as deployed (version 1: before `metadata`, version 3's, 4's and 5's
# columns).
LATER_FIELDS = ("metadata", "tags", "callback_url", "webhook", "history", "send_at", "deliver_by")
V1_FIELDS = tuple(name for name in RECORD_FIELDS if name not in LATER_FIELDS)
INSERT_REQUEST = (
    f"INSERT INTO requests (request_id, {', '.join(V1_FIELDS)}, payload)"  # noqa: S608
    f" VALUES ({', '.join('?' * (len(V1_FIELDS) + 2))})"
)
REQUEST_ID = "66666666-6666-4666-8666-000000000001"
CLAIM = IdempotencyClaim("key-scope", "fingerprint-a", REQUEST_ID)
DEADLINE = 60.0  # seconds a concurrency test may take before it fails instead of hanging


def new_record(request_id: str = REQUEST_ID, owner: str = "p1") -> StatusRecord:
    now = utcnow()
    return StatusRecord(
        request_id=request_id,
        status=EmailStatus.QUEUED,
        sender="sender@example.com",
        recipients=("a@example.com",),
        pending=("a@example.com",),
        created_at=now,
        updated_at=now,
        owner=owner,
    )


def unversioned_file(path: Path, record: StatusRecord) -> Path:
    """A file as the code before versioning made it: WAL, today's tables, user_version 0."""
    fields = record_to_fields(record)
    for name in LATER_FIELDS:
        fields.pop(name)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA_AS_DEPLOYED)
        db.execute(
            INSERT_REQUEST,
            (record.request_id, *fields.values(), '{"subject": "kept"}'),
        )
        db.execute(
            "INSERT INTO idempotency VALUES (?, ?, ?, ?)",
            (CLAIM.scope, CLAIM.fingerprint, CLAIM.request_id, time.time() + 3600),
        )
    return path


def pragma(path: Path, name: str) -> Any:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute(f"PRAGMA {name}").fetchone()[0]


def test_unversioned_file_is_migrated_to_the_current_version_and_keeps_its_record_and_claim(
    tmp_path: Path,
) -> None:
    from mailservice.stores.sqlite_schema import SCHEMA_VERSION

    record = new_record()
    path = unversioned_file(tmp_path / "old.db", record)
    assert pragma(path, "user_version") == 0
    store = SqliteStatusStore(str(path), ttl=60)
    try:
        assert pragma(path, "user_version") == SCHEMA_VERSION == 6
        assert store.get(REQUEST_ID) == record  # later columns read as their defaults
        assert store.get(REQUEST_ID).history == ()  # type: ignore[union-attr]
        assert store.payload(REQUEST_ID) == '{"subject": "kept"}'
        # Version 4's counters start from what the file held, and its index lists it.
        assert store.counts()[EmailStatus.QUEUED] == 1
        assert [r.request_id for r in store.recent(10).records] == [REQUEST_ID]
        repeat = new_record("66666666-6666-4666-8666-000000000002")
        earlier = store.create(repeat, "{}", IdempotencyClaim(CLAIM.scope, "other", "x"))
        assert earlier == CLAIM, "the Idempotency-Key stored before the migration still holds"
    finally:
        store.close()


V4_FIELDS = tuple(name for name in RECORD_FIELDS if name not in ("send_at", "deliver_by"))


def version_4_file(path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A file as the release of schema version 4 left it: a request sent, one queued, written
    through that version's columns and counted by its triggers."""
    from mailservice.stores import sqlite_schema

    with monkeypatch.context() as patch:
        patch.setattr(sqlite_schema, "MIGRATIONS", sqlite_schema.MIGRATIONS[:4])
        patch.setattr(sqlite_schema, "SCHEMA_VERSION", 4)
        db = sqlite_schema.open_database(str(path), timeout=10)
    sent = new_record("66666666-6666-4666-8666-000000000004")
    with contextlib.closing(db):
        for record, payload in ((sent, "{}"), (new_record(), '{"subject": "kept"}')):
            fields = record_to_fields(record)
            db.execute(
                f"INSERT INTO requests (request_id, {', '.join(V4_FIELDS)}, payload)"  # noqa: S608
                f" VALUES ({', '.join('?' * (len(V4_FIELDS) + 2))})",
                (record.request_id, *(fields[name] for name in V4_FIELDS), payload),
            )
        db.execute(
            "UPDATE requests SET status = 'sent', payload = NULL, expires_at = ?"
            " WHERE request_id = ?",
            (time.time() + 60, sent.request_id),
        )
    assert pragma(path, "user_version") == 4
    return path


def test_version_4_file_is_migrated_keeping_its_counts_and_its_triggers_take_every_final_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = version_4_file(tmp_path / "v4.db", monkeypatch)
    store = SqliteStatusStore(str(path), ttl=60)
    try:
        assert pragma(path, "user_version") == SCHEMA_VERSION == 6
        counts = store.counts()
        assert counts[EmailStatus.SENT] == 1 and counts[EmailStatus.QUEUED] == 1
        with contextlib.closing(sqlite3.connect(path)) as db:
            names = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        assert {"requests_scheduled", "requests_kept"} <= names
        migrated = store.get(REQUEST_ID)
        assert migrated is not None and migrated.send_at is migrated.expires_at is None
        assert store.payload(REQUEST_ID) == '{"subject": "kept"}'
        queued = store.get(REQUEST_ID)
        assert queued is not None
        canceled = replace(queued, status=EmailStatus.CANCELED, pending=())
        assert store.save(canceled)
        store.save(replace(canceled, attempts=1))  # final again, same status: counted once
        counts = store.counts()
        assert counts[EmailStatus.QUEUED] == 0, "the new trigger moved the count"
        assert counts[EmailStatus.CANCELED] == 1 and counts[EmailStatus.SENT] == 1
        minute = canceled.updated_at.strftime("%Y-%m-%dT%H:%M")
        finished = store._finished_in([minute])
        assert finished[(minute, EmailStatus.CANCELED)] == 1
        assert store.payload(REQUEST_ID) is None
    finally:
        store.close()


def test_version_5_file_gets_the_suppression_list_and_keeps_its_requests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import timedelta

    from mailservice.stores import sqlite_schema

    path = tmp_path / "v5.db"
    with monkeypatch.context() as patch:
        patch.setattr(sqlite_schema, "MIGRATIONS", sqlite_schema.MIGRATIONS[:5])
        patch.setattr(sqlite_schema, "SCHEMA_VERSION", 5)
        old = SqliteStatusStore(str(path), ttl=60)
        old.create(new_record(), "{}")
        old.close()
    assert pragma(path, "user_version") == 5
    store = SqliteStatusStore(str(path), ttl=60)
    try:
        assert pragma(path, "user_version") == SCHEMA_VERSION == 6
        assert store.get(REQUEST_ID) is not None
        store.suppress("s@example.com", "gone@example.net", "550 5.1.1", utcnow() + timedelta(1))
        assert store.suppressed("s@example.com", ["gone@example.net"]) == {
            "gone@example.net": "550 5.1.1"
        }
    finally:
        store.close()


def test_opening_a_current_file_again_takes_no_write_lock(tmp_path: Path) -> None:
    from mailservice.stores.sqlite_schema import SCHEMA_VERSION, migrate

    path = tmp_path / "s.db"
    SqliteStatusStore(str(path), ttl=60).close()
    executed: list[str] = []
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.set_trace_callback(executed.append)
        assert migrate(db, str(path)) == SCHEMA_VERSION
    assert executed == ["PRAGMA user_version"], "the usual start-up only reads the version"
    assert pragma(path, "user_version") == SCHEMA_VERSION


def test_new_file_starts_at_the_current_version_in_wal_mode(tmp_path: Path) -> None:
    from mailservice.stores.sqlite_schema import SCHEMA_VERSION

    path = tmp_path / "new.db"
    SqliteStatusStore(str(path), ttl=60).close()
    assert pragma(path, "user_version") == SCHEMA_VERSION
    assert pragma(path, "journal_mode") == "wal"


def test_file_newer_than_the_code_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    from mailservice.stores.sqlite_schema import SCHEMA_VERSION

    path = tmp_path / "future.db"
    newer = SCHEMA_VERSION + 1
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE requests (request_id TEXT PRIMARY KEY, shape TEXT)")
        db.execute(f"PRAGMA user_version = {newer}")
    with pytest.raises(ConfigError) as raised:
        SqliteStatusStore(str(path), ttl=60)
    message = str(raised.value)
    assert str(path) in message
    assert f"version {newer}" in message and f"version {SCHEMA_VERSION}" in message
    assert pragma(path, "user_version") == newer
    assert pragma(path, "journal_mode") == "delete", "not even switched to WAL"


def test_the_next_schema_change_is_one_more_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailservice.stores import sqlite_schema

    add_note = (
        "ALTER TABLE requests ADD COLUMN note TEXT;\nCREATE INDEX by_note ON requests (note);"
    )
    nxt = sqlite_schema.SCHEMA_VERSION + 1
    monkeypatch.setattr(sqlite_schema, "MIGRATIONS", (*sqlite_schema.MIGRATIONS, (nxt, add_note)))
    monkeypatch.setattr(sqlite_schema, "SCHEMA_VERSION", nxt)
    record = new_record()
    path = unversioned_file(tmp_path / "old.db", record)
    for _ in range(2):  # the second start finds the new version and runs nothing
        store = SqliteStatusStore(str(path), ttl=60)
        assert store.get(REQUEST_ID) == record
        store.close()
    assert pragma(path, "user_version") == nxt
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert "note" in [row[1] for row in db.execute("PRAGMA table_info(requests)")]


def test_a_failing_migration_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailservice.stores import sqlite_schema

    broken = "CREATE TABLE half_done (x TEXT);\nINSERT INTO no_such_table VALUES (1);"
    nxt = sqlite_schema.SCHEMA_VERSION + 1
    monkeypatch.setattr(sqlite_schema, "MIGRATIONS", (*sqlite_schema.MIGRATIONS, (nxt, broken)))
    monkeypatch.setattr(sqlite_schema, "SCHEMA_VERSION", nxt)
    path = unversioned_file(tmp_path / "old.db", new_record())
    with pytest.raises(ConfigError, match="no_such_table"):
        SqliteStatusStore(str(path), ttl=60)
    assert pragma(path, "user_version") == 0, "every missing version goes in one transaction"
    with contextlib.closing(sqlite3.connect(path)) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert "half_done" not in tables


def test_migration_statements_split_outside_strings_and_trigger_bodies() -> None:
    from mailservice.stores.sqlite_schema import statements

    sql = (
        "CREATE TABLE t (a TEXT DEFAULT ';');\n"
        "CREATE TRIGGER t_ins AFTER INSERT ON t BEGIN DELETE FROM t; SELECT 1; END;\n"
    )
    assert list(statements(sql)) == [
        "CREATE TABLE t (a TEXT DEFAULT ';');",
        "CREATE TRIGGER t_ins AFTER INSERT ON t BEGIN DELETE FROM t; SELECT 1; END;",
    ]


def open_and_use(path: str, worker: int) -> str:
    """Open the store, write and read one record: "ok", or the error."""
    request_id = f"66666666-6666-4666-8666-{worker:012d}"
    try:
        store = SqliteStatusStore(path, ttl=60)
    except ConfigError as exc:
        return str(exc)
    try:
        store.create(new_record(request_id), "{}")
        return "ok" if store.get(request_id) is not None else "record not read back"
    finally:
        store.close()


def test_eight_threads_open_one_new_file_at_once(tmp_path: Path) -> None:
    threads, rounds = 8, 40  # the race showed in about 1 round in 150 before the fix
    results: list[str] = []
    for round_ in range(rounds):
        path = str(tmp_path / f"new-{round_}.db")
        barrier = threading.Barrier(threads)

        def run(worker: int, path: str = path, barrier: threading.Barrier = barrier) -> None:
            barrier.wait(timeout=DEADLINE)
            results.append(open_and_use(path, worker))

        pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(timeout=DEADLINE)
            assert not thread.is_alive(), "opening the store hung"
        assert pragma(Path(path), "user_version") == SCHEMA_VERSION
        assert pragma(Path(path), "journal_mode") == "wal"
    assert [r for r in results if r != "ok"] == []
    assert len(results) == threads * rounds


def open_in_rounds(folder: str, rounds: int, worker: int, barrier: Any, results: Any) -> None:
    """One process of the test below: at each round, open that round's new file with the
    others at the same moment."""
    for round_ in range(rounds):
        try:
            barrier.wait(timeout=DEADLINE)
        except threading.BrokenBarrierError:
            results.put("barrier broken")
            return
        results.put(open_and_use(f"{folder}/new-{round_}.db", worker))


def test_four_processes_open_one_new_file_at_once(tmp_path: Path) -> None:
    processes, rounds = 4, 10  # before the fix about one round in four failed
    context = multiprocessing.get_context("spawn")  # each worker a fresh process, as gunicorn's
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [
        context.Process(target=open_in_rounds, args=(str(tmp_path), rounds, i, barrier, results))
        for i in range(processes)
    ]
    for process in workers:
        process.start()
    try:
        outcomes = [results.get(timeout=DEADLINE) for _ in range(processes * rounds)]
    finally:
        for process in workers:
            process.join(timeout=DEADLINE)
            if process.is_alive():
                process.kill()
                process.join()
    assert [outcome for outcome in outcomes if outcome != "ok"] == []
    assert all(process.exitcode == 0 for process in workers)
    results.close()


# -- the URL's path --------------------------------------------------------------------------


def test_three_slashes_name_a_file_relative_to_the_working_directory(tmp_path, monkeypatch):
    # sqlite:///var/lib/mail/status.db is var/lib/mail/status.db under the working directory.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "var").mkdir()
    store = SqliteStatusStore.from_url("sqlite:///var/status.db", ttl=60)
    store.close()
    assert (tmp_path / "var" / "status.db").is_file()


def test_four_slashes_name_an_absolute_path(tmp_path, monkeypatch):
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert str(tmp_path).startswith("/")
    store = SqliteStatusStore.from_url(f"sqlite:///{tmp_path}/status.db", ttl=60)  # ////tmp/...
    store.close()
    assert (tmp_path / "status.db").is_file()
    assert not any(elsewhere.iterdir())
