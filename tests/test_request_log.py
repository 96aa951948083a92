"""The request log of API.md section 5: seed format, one line per event, no secrets, no forgery."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from request_log import RequestLog
from tests.conftest import API_KEY, SENDER, send, wait_final, wait_for
from tests.smtp_servers import SmtpServer

LINE = re.compile(
    r"Request ID: (?P<id>[^,\n]+), Sender: (?P<sender>[^,\n]+), Recipient: (?P<rcpt>[^,\n]*), "
    r"Date: (?P<date>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d), "
    r"Status: (?P<status>queued|sent|failed \(.+\))"
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
    request_id = send(client, body).get_json()["request_id"]
    wait_final(client, request_id)
    queued, sent = wait_lines(log_path, request_id)
    assert re.fullmatch(UUID, request_id)
    for match in (queued, sent):
        assert match["sender"] == SENDER
        assert match["rcpt"] == "to1@example.com;to2@example.com;cc@example.com;bcc@example.com"
        stamp = datetime.strptime(match["date"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
        assert abs((datetime.now(UTC) - stamp).total_seconds()) < 60
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
from request_log import RequestLog
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
