"""The harness's Celery worker and Flower, run on a tiny Celery app of this test's own.

The app is written into tmp_path, so these tests depend on no part of the service's Celery app:
they check the harness itself. A worker's start() returns only once it consumes, stop() is a
warm shutdown (a running task finishes, exit code 0), kill() leaves no process of its group.
"""

from __future__ import annotations

import base64
import http.client
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from mailservice.testing.celery_worker import (
    CeleryDidNotStart,
    CeleryWorker,
    FlowerProcess,
    group_members,
)
from mailservice.testing.redis_server import RedisServer
from tests.conftest import wait_for

pytestmark = pytest.mark.redis

APP_MODULE = "harness_app"
APP_SOURCE = '''
"""A Celery app for the harness's test: one task that leaves marks in a folder."""
import os
import time
from pathlib import Path

from celery import Celery

app = Celery("harness_app", broker=os.environ["HARNESS_BROKER_URL"])
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1)


@app.task(name="harness.mark")
def mark(folder: str, seconds: float) -> None:
    Path(folder, f"started-{os.getpid()}").touch()
    time.sleep(seconds)
    Path(folder, f"done-{os.getpid()}").touch()
'''


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    server = RedisServer(tmp_path).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def app_env(tmp_path: Path, broker: str) -> dict[str, str]:
    """The environment that makes `-A harness_app` import the app above."""
    (tmp_path / f"{APP_MODULE}.py").write_text(APP_SOURCE)
    return {"PYTHONPATH": str(tmp_path), "HARNESS_BROKER_URL": broker}


@pytest.fixture
def worker(tmp_path: Path, app_env: dict[str, str]) -> Iterator[CeleryWorker]:
    started = CeleryWorker(tmp_path, app_env, concurrency=2, app_module=APP_MODULE)
    try:
        yield started
    finally:
        started.kill()


def send_mark(broker: str, folder: Path, seconds: float) -> None:
    client = Celery("harness_client", broker=broker)
    try:
        client.send_task("harness.mark", args=[str(folder), seconds])
    finally:
        client.close()


def marks(folder: Path, kind: str) -> list[Path]:
    return sorted(folder.glob(f"{kind}-*"))


def test_start_returns_once_ready_with_its_pool(worker: CeleryWorker) -> None:
    worker.start()
    assert worker.running
    assert "w1@" in worker.output and " ready." in worker.output
    assert len(worker.children()) == 2  # --concurrency 2: two prefork processes
    assert worker.pid is not None and worker.pid in group_members(worker.pid)


def test_stop_is_a_warm_shutdown(worker: CeleryWorker, broker: str, tmp_path: Path) -> None:
    folder = tmp_path / "marks"
    folder.mkdir()
    worker.start()
    pgid = worker.pid
    assert pgid is not None
    send_mark(broker, folder, seconds=1.0)
    wait_for(lambda: marks(folder, "started"), timeout=30)
    assert worker.stop() == 0
    assert len(marks(folder, "done")) == 1  # the running task finished before the exit
    assert not worker.running
    assert group_members(pgid) == []
    # Started again on the same log, it is ready only once this start consumes.
    worker.start()
    send_mark(broker, folder, seconds=0.0)
    wait_for(lambda: len(marks(folder, "done")) == 2, timeout=30)


def test_kill_ends_the_whole_group(worker: CeleryWorker, broker: str, tmp_path: Path) -> None:
    folder = tmp_path / "marks"
    folder.mkdir()
    worker.start()
    pgid = worker.pid
    assert pgid is not None
    pool = worker.children()
    assert len(pool) == 2
    send_mark(broker, folder, seconds=120.0)
    wait_for(lambda: marks(folder, "started"), timeout=30)
    assert worker.kill() == -9
    assert group_members(pgid) == []
    assert all(pid not in group_members(pgid) for pid in pool)
    assert marks(folder, "done") == []  # its task died with it, mid-sleep


def test_start_fails_with_the_log_when_the_app_does_not_import(
    tmp_path: Path, app_env: dict[str, str]
) -> None:
    worker = CeleryWorker(tmp_path, app_env, app_module="no_such_app_module")
    with pytest.raises(CeleryDidNotStart, match="no_such_app_module"):
        worker.start()
    assert not worker.running


def test_flower_answers_behind_basic_auth(tmp_path: Path, app_env: dict[str, str]) -> None:
    flower = FlowerProcess(tmp_path, app_env, basic_auth="ops:secret", app_module=APP_MODULE)
    flower.start()
    try:
        assert get_status(flower.port, None) == 401
        assert get_status(flower.port, "ops:secret") == 200
    finally:
        flower.stop()
    assert not flower.running


def get_status(port: int, credentials: str | None) -> int:
    headers = {}
    if credentials is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/", headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()
