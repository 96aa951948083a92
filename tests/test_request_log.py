"""The request log of API.md section 5: seed format, one line per event, no secrets, no forgery."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailservice.events.request_log import RequestLog
from mailservice.testing.smtp_servers import SmtpServer
from tests.conftest import API_KEY, SENDER, send, wait_final, wait_for

LINE = re.compile(
    r"Request ID: (?P<id>[^,\n]+), Sender: (?P<sender>[^,\n]+), Recipient: (?P<rcpt>[^,\n]*), "
    r"Date: (?P<date>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d), "
    r"Status: (?P<status>queued|scheduled|sent|canceled|(failed|expired) \(.+\))"
)
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
REPO = Path(__file__).resolve().parent.parent


def log_lines(path: Path) -> list[str]:
    data = path.read_bytes().decode("utf-8")
    assert data == "" or data.endswith("\n")
    return data.split("\n")[:-1]


def lines_of(path: Path, request_id: str) -> list[re.Match[str]]:
    matches = []
    for line in log_lines(path):
        match = LINE.fullmatch(line)
        assert match, line
        if match["id"] == request_id:
            matches.append(match)
    return matches


def wait_lines(path: Path, request_id: str, count: int = 2) -> list[re.Match[str]]:
    """The request's lines once there are `count`: the final status is saved just before
    its line is written, so a status that reads final does not mean the line is there yet."""
    return wait_for(lambda: len(found := lines_of(path, request_id)) >= count and found)


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "email_log.txt"


# -- through the service ------------------------------------------------------------------------


def test_accepted_and_sent_request_logs_queued_then_sent(client, smtp_server, log_path):
    body = {
        "recipient": ["to1@example.com", "to2@example.com"],
        "cc": ["cc@example.com"],
        "bcc": ["bcc@example.com"],
        "subject": "Hi",
        "body": "Hello",
    }
    before = datetime.now(UTC).replace(microsecond=0)
    request_id = send(client, body).get_json()["request_id"]
    wait_final(client, request_id)
    queued, sent = wait_lines(log_path, request_id)
    after = datetime.now(UTC)
    assert re.fullmatch(UUID, request_id)
    stamps = []
    for match in (queued, sent):
        assert match["sender"] == SENDER
        assert match["rcpt"] == "to1@example.com;to2@example.com;cc@example.com;bcc@example.com"
        stamps.append(datetime.strptime(match["date"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC))
    # Wall-clock UTC times taken during this request, queued first: an order, not a time-out.
    assert before <= stamps[0] <= stamps[1] <= after
    assert queued["status"] == "queued"
    assert sent["status"] == "sent"


def test_seed_format_line_exactly(client, smtp_server, log_path):
    request_id = send(client).get_json()["request_id"]
    wait_final(client, request_id)
    queued = log_lines(log_path)[0]
    assert re.fullmatch(
        rf"Request ID: {request_id}, Sender: sender@example\.com, "
        r"Recipient: user@example\.com, Date: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d, Status: queued",
        queued,
    )


def test_failed_request_logs_failed_with_reason(client, smtp_server, log_path):
    smtp_server.handler.script("DATA", "550 5.7.1 content rejected")
    request_id = send(client).get_json()["request_id"]
    assert wait_final(client, request_id)["status"] == "failed"
    queued, failed = wait_lines(log_path, request_id)
    assert queued["status"] == "queued"
    assert failed["status"].startswith("failed (550 5.7.1 content rejected")
    assert failed["status"].endswith(")")


def test_retries_do_not_add_lines(make_app, smtp_server, log_path):
    client = make_app(smtp_server.port).test_client()
    smtp_server.handler.script("DATA", "451 4.3.0 later", "451 4.3.0 later")
    request_id = send(client).get_json()["request_id"]
    assert wait_final(client, request_id)["attempts"] == 3
    wait_lines(log_path, request_id)
    assert [m["status"] for m in lines_of(log_path, request_id)] == ["queued", "sent"]


def test_rejected_requests_are_not_logged(client, smtp_server, log_path):
    send(client, {"recipient": "nope", "subject": "x", "body": "x"})
    send(client, key="wrong-key")
    assert not log_path.exists() or log_lines(log_path) == []


def test_no_subject_body_key_or_password_in_the_log(make_app, start_smtp, log_path):
    password = "pw-Secret-1234"
    server: SmtpServer = start_smtp(logins={SENDER: password})
    client = make_app(server.port, password=password).test_client()
    body = {
        "recipient": "user@example.com",
        "subject": "SUBJECT-SECRET-42",
        "body": "BODY-SECRET-43",
        "key": API_KEY,
        "headers": {"X-Token": "HEADER-SECRET-44"},
    }
    ok = send(client, body, key="").get_json()["request_id"]
    assert wait_final(client, ok)["status"] == "sent"
    server.handler.script("DATA", "554 5.6.0 BODY-SECRET-43 is spam")
    failed = send(client, body, key="").get_json()["request_id"]
    assert wait_final(client, failed)["status"] == "failed"
    wait_lines(log_path, ok)
    wait_lines(log_path, failed)
    text = log_path.read_text(encoding="utf-8")
    assert len(log_lines(log_path)) == 4
    for secret in ("SUBJECT-SECRET-42", "HEADER-SECRET-44", API_KEY, password):
        assert secret not in text
    # The server's own reply may quote anything; the body itself is never written by us.
    assert text.count("BODY-SECRET-43") <= 1


# -- RequestLog directly --------------------------------------------------------------------------


@pytest.fixture
def request_log(log_path: Path):
    log = RequestLog(str(log_path))
    yield log
    log.close()


def test_write_formats_the_seed_line(request_log, log_path):
    when = datetime(2026, 11, 20, 16, 14, 34, tzinfo=UTC)
    request_log.write(
        "id-1", "a@example.com", ["b@example.com", "c@example.com"], "sent", when=when
    )
    request_log.write("id-2", "a@example.com", ["b@example.com"], "failed", "550 no", when=when)
    request_log.flush()  # lines are written by the log's own thread
    assert log_lines(log_path) == [
        "Request ID: id-1, Sender: a@example.com, Recipient: b@example.com;c@example.com, "
        "Date: 2026-11-20 16:14:34, Status: sent",
        "Request ID: id-2, Sender: a@example.com, Recipient: b@example.com, "
        "Date: 2026-11-20 16:14:34, Status: failed (550 no)",
    ]


def test_each_status_an_event_carries_gets_its_line(request_log, log_path):
    from dataclasses import replace

    from mailservice.events.bus import Accepted, Finished
    from mailservice.stores.contract import EmailStatus, StatusRecord

    when = datetime(2026, 11, 20, 16, 14, 34, tzinfo=UTC)
    record = StatusRecord(
        "id-1", EmailStatus.SCHEDULED, "a@example.com", ("b@example.com",), (), when, when,
        send_at=when,
    )  # fmt: skip
    request_log.on_event(Accepted(record))
    expired = replace(record, status=EmailStatus.EXPIRED, error="expired: 451 later")
    request_log.on_event(Finished(expired))
    # A cancel says no more than that, whatever error the request carried from a retry.
    request_log.on_event(Finished(replace(expired, status=EmailStatus.CANCELED)))
    request_log.flush()
    shown = [line.rsplit("Status: ", 1)[1] for line in log_lines(log_path)]
    assert shown == ["scheduled", "expired (expired: 451 later)", "canceled"]
    assert all(LINE.fullmatch(line) for line in log_lines(log_path))


def test_date_is_written_in_utc(request_log, log_path):
    from datetime import timedelta, timezone

    when = datetime(2026, 11, 20, 18, 14, 34, tzinfo=timezone(timedelta(hours=2)))
    request_log.write("id", "a@example.com", ["b@example.com"], "sent", when=when)
    request_log.flush()
    assert "Date: 2026-11-20 16:14:34," in log_lines(log_path)[0]


@pytest.mark.parametrize("brk", ["\n", "\r", "\r\n", "\u2028", "\u2029", "\x85", "\v", "\f", "\0"])
def test_line_breaks_in_values_cannot_forge_a_line(request_log, log_path, brk):
    forged = (
        f"{brk}Request ID: forged, Sender: evil@example.com, Recipient: x, "
        "Date: 2026-01-01 00:00:00, Status: sent"
    )
    request_log.write(
        "id" + forged,
        "a@example.com" + forged,
        ["b@example.com" + forged, "c@example.com"],
        "failed",
        reason="550 nope" + forged,
    )
    request_log.flush()
    raw = log_path.read_bytes().decode("utf-8")
    assert raw.count("\n") == 1
    assert len(raw.splitlines()) == 1
    assert "\0" not in raw
    assert raw.startswith("Request ID: id")


def test_rotation_by_size_keeps_the_backups(log_path):
    log = RequestLog(str(log_path), max_bytes=1000, backups=2)
    try:
        for i in range(100):
            log.write(f"id-{i:04d}", "a@example.com", ["b@example.com"], "sent")
    finally:
        log.close()
    backups = sorted(p.name for p in log_path.parent.glob("email_log.txt.*") if p.suffix != ".lock")
    assert backups == ["email_log.txt.1", "email_log.txt.2"]
    for path in (
        log_path,
        log_path.with_name("email_log.txt.1"),
        log_path.with_name("email_log.txt.2"),
    ):
        assert path.stat().st_size <= 1000
        assert all(LINE.fullmatch(line) for line in log_lines(path))
    assert log_lines(log_path)[-1].startswith("Request ID: id-0099,")


def test_concurrent_threads_never_interleave(request_log, log_path):
    threads_n, lines_n = 8, 200

    def writer(t: int) -> None:
        for i in range(lines_n):
            request_log.write(
                f"t{t}-{i:04d}", f"sender{t}@example.com", [f"r{t}@example.com"] * 5, "sent"
            )

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    request_log.flush()
    lines = log_lines(log_path)
    assert len(lines) == threads_n * lines_n
    assert all(LINE.fullmatch(line) for line in lines)
    assert len(set(lines)) >= threads_n * lines_n - 10  # ids differ; dates may repeat


WRITER = """
import sys
from mailservice.events.request_log import RequestLog
path, tag, count, max_bytes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
log = RequestLog(path, max_bytes=max_bytes, backups=50)
for i in range(count):
    log.write(f"{tag}-{i:05d}", "p@example.com", ["r@example.com"] * 3, "failed", "451 x" * 5)
log.close()
"""


def run_writers(log_path: Path, processes: int, count: int, max_bytes: int) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(log_path), f"p{n}", str(count), str(max_bytes)],
            cwd=REPO,
        )
        for n in range(processes)
    ]
    for proc in procs:
        assert proc.wait(timeout=60) == 0


def test_concurrent_processes_never_interleave(log_path):
    run_writers(log_path, processes=2, count=1500, max_bytes=100 * 1024 * 1024)
    lines = log_lines(log_path)
    assert len(lines) == 3000
    assert all(LINE.fullmatch(line) for line in lines)
    for tag in ("p0", "p1"):
        ids = [
            LINE.fullmatch(line)["id"] for line in lines if line.startswith(f"Request ID: {tag}-")
        ]
        assert ids == [f"{tag}-{i:05d}" for i in range(1500)]


def test_concurrent_processes_rotating_lose_no_line(log_path):
    run_writers(log_path, processes=2, count=800, max_bytes=20_000)
    files = [log_path, *log_path.parent.glob("email_log.txt.[0-9]*")]
    assert len(files) > 2
    lines = [line for path in files for line in log_lines(path)]
    assert all(LINE.fullmatch(line) for line in lines)
    assert len(lines) == 1600
    assert len({LINE.fullmatch(line)["id"] for line in lines}) == 1600
    for path in files:
        assert path.stat().st_size <= 20_000


# -- a full or failing disk -----------------------------------------------------------------------


def fill(folder: Path, leave: int = 0) -> Path:
    """A file taking all the space on `folder`'s file system but `leave` bytes (whole pages)."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_CREAT | os.O_WRONLY)
    try:
        while True:
            os.write(fd, bytes(65536))
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    if leave:
        os.truncate(filler, filler.stat().st_size - leave)
    return filler


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 256 KiB tmpfs, to be filled; skipped where mounting is not allowed (not root),
    failed under CI=true when root cannot mount."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder = tmp_path / "tmpfs"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        message = f"cannot mount a tmpfs: {mounted.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    yield folder
    subprocess.run(["umount", str(folder)], check=False)
    if os.path.ismount(folder):  # a descriptor left open by a failed test: detach it anyway
        subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.fixture
def dev_full_log(tmp_path: Path) -> Path:
    """A log path where every write fails with ENOSPC, as root or not: a link to /dev/full.

    Pointing the link at a real file (`repair`) is the disk coming back: the log notices that
    its path names another file and reopens it."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    link = tmp_path / "email_log.txt"
    link.symlink_to("/dev/full")
    return link


def repair(link: Path) -> Path:
    """Point the log's link at a real file, atomically; that file."""
    real = link.with_name("real_log.txt")
    real.touch()
    tmp = link.with_name("link.tmp")
    tmp.symlink_to(real)
    os.replace(tmp, link)
    return real


def warnings_with(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def ids_in(path: Path) -> list[str]:
    """The ids of the file's lines, read under the log's flock as another process would: a
    write the disk takes only part of is in the file until the writer cuts it back."""
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return [LINE.fullmatch(line)["id"] for line in log_lines(path)]


def write_ids(log: RequestLog, ids: Iterable[str]) -> None:
    for request_id in ids:
        log.write(request_id, "a@example.com", ["b@example.com"], "sent")


def test_full_tmpfs_is_reported_once_and_every_line_is_written_once_space_is_freed(
    small_tmpfs, caplog
):
    caplog.set_level(logging.WARNING, logger="mailservice.events.request_log")
    path = small_tmpfs / "email_log.txt"
    log = RequestLog(str(path))
    # One page left: the first lines fit, a batch then fails part-way through a line.
    filler = fill(small_tmpfs, leave=4096)
    ids = [f"id-{i:04d}" for i in range(400)]
    try:
        write_ids(log, ids)
        wait_for(lambda: warnings_with(caplog, "cannot be written"))
        assert log.flush(timeout=0.2) is False
        assert log._writer.is_alive()
        before = ids_in(path)  # whole lines only: the part of the failed write was cut back
        assert before == ids[: len(before)]
        assert 0 < len(before) < len(ids)

        filler.unlink()
        assert log.flush(timeout=15) is True
        assert ids_in(path) == ids  # every line, in order, once
        late = len(ids) - len(before)
        wait_for(lambda: warnings_with(caplog, "written again"))
        assert f"{late} lines written late, 0 dropped" in warnings_with(caplog, "written again")[0]
        assert len(warnings_with(caplog, "cannot be written")) == 1
        assert log._writer.is_alive()
    finally:
        log.close()


def test_rotation_fails_on_a_full_tmpfs_and_resumes(small_tmpfs, caplog):
    caplog.set_level(logging.WARNING, logger="mailservice.events.request_log")
    path = small_tmpfs / "email_log.txt"
    log = RequestLog(str(path), max_bytes=2000, backups=5)
    filler = fill(small_tmpfs, leave=4096)  # room for the first file, none for the next
    ids = [f"id-{i:04d}" for i in range(60)]
    try:
        write_ids(log, ids)
        wait_for(lambda: warnings_with(caplog, "cannot be written"))
        filler.unlink()
        assert log.flush(timeout=15) is True
    finally:
        log.close()
    files = sorted(small_tmpfs.glob("email_log.txt.[0-9]"), key=lambda p: -int(p.suffix[1:]))
    assert len(files) >= 2
    assert [i for f in [*files, path] for i in ids_in(f)] == ids
    assert all(f.stat().st_size <= 2000 for f in [*files, path])


def test_failing_writes_are_retried_and_the_writer_survives(dev_full_log, caplog):
    caplog.set_level(logging.WARNING, logger="mailservice.events.request_log")
    log = RequestLog(str(dev_full_log))
    ids = [f"id-{i:04d}" for i in range(50)]
    try:
        write_ids(log, ids)
        wait_for(lambda: warnings_with(caplog, "cannot be written"))
        assert "No space left on device" in warnings_with(caplog, "cannot be written")[0]
        assert log.flush(timeout=0.2) is False
        assert log._writer.is_alive()
        real = repair(dev_full_log)
        # No flush(): the writer's own retries must bring the lines to the file.
        wait_for(lambda: ids_in(real) == ids, timeout=15)
        wait_for(lambda: warnings_with(caplog, "written again"))
        assert "50 lines written late, 0 dropped" in warnings_with(caplog, "written again")[0]
        assert len(warnings_with(caplog, "cannot be written")) == 1
        write_ids(log, ["id-after"])
        assert log.flush() is True
        assert ids_in(real) == [*ids, "id-after"]
    finally:
        log.close()


def test_lines_beyond_max_pending_are_dropped_and_counted(dev_full_log, caplog):
    caplog.set_level(logging.WARNING, logger="mailservice.events.request_log")
    log = RequestLog(str(dev_full_log), max_pending=10)
    try:
        write_ids(log, ["id-00000"])
        wait_for(lambda: warnings_with(caplog, "cannot be written"))
        ids = [f"id-{i:05d}" for i in range(1, 3001)]
        write_ids(log, ids)
        assert log._lines.qsize() <= 10
        real = repair(dev_full_log)
        assert log.flush(timeout=15) is True
        written = ids_in(real)
        assert written == sorted(written)  # in order, whatever was kept
        assert written[0] == "id-00000"
        assert len(written) < len(ids) / 2
        dropped = len(ids) + 1 - len(written)
        wait_for(lambda: warnings_with(caplog, "written again"))
        assert (
            f"{len(written)} lines written late, {dropped} dropped"
            in warnings_with(caplog, "written again")[0]
        )
    finally:
        log.close()


def test_close_on_a_failing_disk_returns_and_counts_what_it_leaves(dev_full_log, caplog):
    caplog.set_level(logging.WARNING, logger="mailservice.events.request_log")
    log = RequestLog(str(dev_full_log))
    write_ids(log, [f"id-{i:04d}" for i in range(30)])
    wait_for(lambda: warnings_with(caplog, "cannot be written"))
    result: list[bool] = []
    closer = threading.Thread(target=lambda: result.append(log.close(timeout=0.3)))
    closer.start()
    closer.join(timeout=15)
    assert not closer.is_alive()
    assert result == [False]
    assert not log._writer.is_alive()
    assert "closed with 30 lines unwritten" in warnings_with(caplog, "closed with")[0]
    assert log.flush() is False


KILLED_WRITER = """
import logging, sys, time
from mailservice.events.request_log import RequestLog
logging.basicConfig(level=logging.WARNING)
log = RequestLog(sys.argv[1])
for i in range(20):
    log.write(f"before-{i:02d}", "a@example.com", ["b@example.com"], "sent")
sys.stdin.readline()
for i in range(20):
    log.write(f"after-{i:02d}", "a@example.com", ["b@example.com"], "sent")
time.sleep(120)
"""


def test_lines_reach_the_file_before_a_sigkill_after_a_full_disk(dev_full_log):
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(dev_full_log)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    said: list[str] = []

    def read_stderr() -> None:
        for line in proc.stderr:
            said.append(line)

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("cannot be written" in line for line in said))
        real = repair(dev_full_log)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        expected = [f"before-{i:02d}" for i in range(20)] + [f"after-{i:02d}" for i in range(20)]
        wait_for(lambda: ids_in(real) == expected, timeout=15)
    finally:
        proc.kill()
        proc.wait(timeout=10)
        reader.join(timeout=10)
        proc.stdin.close()
        proc.stderr.close()
    assert ids_in(real) == expected


def test_a_long_outage_is_reported_again_while_it_lasts(dev_full_log, caplog, monkeypatch):
    monkeypatch.setattr(
        "mailservice.events.request_log.REPORT_EVERY", 0.0
    )  # every retry, instead of every minute
    caplog.set_level(logging.WARNING, logger="mailservice.events.request_log")
    log = RequestLog(str(dev_full_log))
    try:
        write_ids(log, ["id-0"])
        wait_for(lambda: warnings_with(caplog, "still cannot be written"))
        assert "1 lines waiting, 0 dropped" in warnings_with(caplog, "still cannot be written")[0]
        assert len(warnings_with(caplog, "cannot be written (")) == 1
    finally:
        log.close(timeout=0.1)


def test_a_lone_surrogate_is_escaped_not_lost(request_log, log_path):
    request_log.write("id-\ud800", "a@example.com", ["b@example.com"], "sent")
    request_log.write("id-next", "a@example.com", ["b@example.com"], "sent")
    assert request_log.flush() is True
    assert [line.split(",")[0] for line in log_lines(log_path)] == [
        "Request ID: id-\\ud800",
        "Request ID: id-next",
    ]
