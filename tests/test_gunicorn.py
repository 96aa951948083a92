"""The production setup that uses every core: gunicorn workers, each with its own pool, on one
shared durable store, each worker pinned to a core; and slow clients that must not stall it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bench.slow_clients import Dribblers, body_payload, head_payload, normal_calls
from mailservice import config
from mailservice.testing.ports import free_port
from mailservice.testing.service_process import ROOT
from tests.conftest import API_KEY, wait_for
from tests.test_durability import message, message_ids, service_env


class GunicornProcess:
    """`gunicorn -c gunicorn.conf.py 'mail_server:create_app()'` as production runs it, on a
    free loopback port; `env` adds to the current environment, its output goes to a file."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.folder = tmp_path
        self.env = {**os.environ, **env, "HOST": "127.0.0.1", "PORT": str(self.port)}
        self.log_path = tmp_path / "gunicorn.out"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> GunicornProcess:
        with self.log_path.open("w") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"),
                    "--control-socket", str(self.folder / "gunicorn.ctl"),
                    "mail_server:create_app()",
                ],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            wait_for(lambda: _answers(self.base), timeout=20)
        except AssertionError:
            self.stop()
            raise
        return self

    def stop(self) -> tuple[int, str]:
        """SIGTERM, wait for the exit (at most 60 s); the exit code and everything logged."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        return code, self.log_path.read_text()


@pytest.fixture(params=["sqlite", "redis"])
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'status.db'}"
    return request.getfixturevalue("redis_server").url


def post(base: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method="POST" if body else "GET")
    req.add_header("Authorization", f"Bearer {API_KEY}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def test_two_gunicorn_workers_share_one_store_and_drain_on_sigterm(
    tmp_path, smtp_server, shared_store
):
    service = GunicornProcess(
        tmp_path,
        {
            **service_env(tmp_path, smtp_server.port, shared_store, RATE_LIMIT="1000/minute"),
            "GUNICORN_WORKERS": "2",
            "TOKEN_SECRET": "one-secret-for-all-workers",
        },
    ).start()
    base = service.base
    try:
        ids = []
        for i in range(60):
            status, body = post(base, "/send-email", message(i))
            assert status == 202
            ids.append(json.loads(body)["request_id"])
        wait_for(lambda: len(smtp_server.received) == 60, timeout=30)
        # Any worker answers for any request: the status lives in the shared store.
        for request_id in ids:
            status, body = post(base, f"/email-status/{request_id}")
            assert status == 200
            assert json.loads(body)["status"] == "sent"
        assert len(message_ids(smtp_server)) == 60
    finally:
        code, log = service.stop()
    assert code == 0, log
    assert log.count("pinned to core") == 2
    assert log.count("drained; 0 request(s) left unsent") == 2


def new_wal_file(path: Path) -> Path:
    """A SQLite file already in WAL mode: two workers switching a new file to WAL at the same
    moment can fail with "database is locked" (a start-up race of sqlite_store, not tested here)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=WAL")
    return path


def _answers(base: str) -> bool:
    try:
        return post(base, "/healthz")[0] == 200
    except OSError:
        time.sleep(0.05)
        return False


def test_slow_clients_hold_no_thread_and_normal_calls_are_answered(tmp_path, smtp_server):
    # 100 clients send a head a byte at a time (it never ends) and 20 a body, while one
    # client makes normal calls: gthread gave every thread to the slow ones.
    store = f"sqlite:///{new_wal_file(tmp_path / 'status.db')}"
    service = GunicornProcess(
        tmp_path, {**service_env(tmp_path, smtp_server.port, store), "GUNICORN_WORKERS": "2"}
    ).start()
    heads = Dribblers(service.port, 100, 0.1, head_payload("127.0.0.1", API_KEY, "/send-email"))
    slow_body = json.dumps({**message(0), "body": "slow " * 400}).encode()  # 200 s at 10 B/s
    head, body = body_payload("127.0.0.1", API_KEY, "/send-email", slow_body)
    bodies = Dribblers(service.port, 20, 0.1, body, first=head)
    try:
        heads.start()
        bodies.start()
        assert heads.wait_open(15) and bodies.wait_open(15)
        wait_for(lambda: heads.snapshot().bytes_sent >= 300, timeout=15)  # 3 bytes each
        calls = normal_calls(
            service.port, API_KEY, "/send-email", json.dumps(message(1)).encode(),
            pairs=30, timeout=5, max_seconds=60,
        )  # fmt: skip
        assert calls.failures == {}, calls.first_failures
        assert (len(calls.send_ms), len(calls.read_ms)) == (30, 30)
        wait_for(lambda: len(smtp_server.received) == 30, timeout=30)
        for request_id in calls.request_ids:
            status, answer = post(service.base, f"/email-status/{request_id}")
            assert (status, json.loads(answer)["status"]) == (200, "sent")
        assert heads.snapshot().open_now == 100  # still there, still sending
        # A head that never ends is answered 408 and closed after the worker's head deadline.
        wait_for(lambda: heads.snapshot().answered_by_server >= 100, timeout=40)
        assert heads.snapshot().finished == bodies.snapshot().finished == 0
    finally:
        heads.stop()
        bodies.stop()
        code, log = service.stop()
    assert code == 0, log
    assert log.count("drained; 0 request(s) left unsent") == 2


# -- start-up with a bad setting: the master stops with one line, no worker boots ----------------


def gunicorn_start_up(cwd: Path, env: dict[str, str], timeout: float = 20) -> tuple[int, str]:
    """Run gunicorn as production does, in `cwd`, with only `env` for service variables, until
    it exits by itself; the exit code and everything it printed. Fails if it is still running
    after `timeout` seconds (it booted instead of refusing)."""
    clean = {k: v for k, v in os.environ.items() if k not in config._VARIABLES}
    process = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"),
            "mail_server:create_app()",
        ],
        cwd=cwd,
        env={**clean, "HOST": "127.0.0.1", "PORT": str(free_port()), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
        raise AssertionError(f"gunicorn still running after {timeout}s:\n{output}") from None
    return process.returncode, output


BAD_START_UPS = [
    ("GUNICORN_WORKERS", "two"),
    ("GUNICORN_THREADS", "0"),
    ("PIN_CPUS", "maybe"),
    ("STATUS_STORE_URL", "foo://x"),
    ("STATUS_STORE_URL", "memory://?max=x"),
    ("STATUS_STORE_URL", "redis://:pw-123@127.0.0.1:noport/0"),
    ("STATUS_STORE_URL", "sqlite:///{tmp}/a-file/status.db"),
    ("EMAIL_LOG", "{tmp}/missing-folder/email_log.txt"),
    ("PROMETHEUS_MULTIPROC_DIR", "{tmp}/a-file"),
]


@pytest.mark.parametrize(
    ("name", "value"), BAD_START_UPS, ids=[f"{n}={v}" for n, v in BAD_START_UPS]
)
def test_gunicorn_with_bad_setting_exits_2_with_one_line_naming_it(tmp_path, name, value):
    (tmp_path / "a-file").write_text("not a folder\n", encoding="utf-8")
    env = service_env(tmp_path, free_port(), "memory://")
    env[name] = value.format(tmp=tmp_path)
    code, output = gunicorn_start_up(tmp_path, env)  # fails if gunicorn booted instead
    assert code == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("mail_server: configuration error: ")
    assert name in lines[0]
    assert "Traceback" not in output
    assert "Worker failed to boot" not in output
    assert "pw-123" not in output  # a Redis URL's password is never repeated
    # Checked, not opened: no folder or file was made for the bad setting.
    assert not (tmp_path / "missing-folder").exists()
    assert not (tmp_path / "email_log.txt").exists()


def test_gunicorn_reads_process_layout_settings_from_dotenv(tmp_path):
    # A .env in the working directory sets GUNICORN_* like any other variable.
    (tmp_path / ".env").write_text("GUNICORN_WORKERS=zero\n", encoding="utf-8")
    code, output = gunicorn_start_up(tmp_path, service_env(tmp_path, free_port(), "memory://"))
    assert code == 2, output
    assert output.strip() == (
        "mail_server: configuration error: GUNICORN_WORKERS='zero' is not valid: "
        "invalid literal for int() with base 10: 'zero'"
    )
