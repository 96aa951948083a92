"""The production setup that uses every core: gunicorn workers, each with its own pool, on one
shared durable store, each worker pinned to a core."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import API_KEY, wait_for
from tests.service_process import ROOT
from tests.smtp_servers import free_port
from tests.test_durability import message, message_ids, service_env


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
    port = free_port()
    env = {
        **os.environ,
        **service_env(tmp_path, smtp_server.port, shared_store, RATE_LIMIT="1000/minute"),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "GUNICORN_WORKERS": "2",
        "TOKEN_SECRET": "one-secret-for-all-workers",
    }
    out = (tmp_path / "gunicorn.out").open("w")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"),
            "--control-socket", str(tmp_path / "gunicorn.ctl"), "mail_server:create_app()",
        ],
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(base), timeout=20)
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
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
        out.close()
    log = (tmp_path / "gunicorn.out").read_text()
    assert code == 0, log
    assert log.count("pinned to core") == 2
    assert log.count("drained; 0 request(s) left unsent") == 2


def _answers(base: str) -> bool:
    try:
        return post(base, "/healthz")[0] == 200
    except OSError:
        time.sleep(0.05)
        return False
