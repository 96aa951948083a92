"""A throw-away `redis-server` on a free loopback port, for tests and the bench.

`RedisServer(workdir).start()` runs one without persistence, or with `appendonly=True`, which
keeps what it was given across a kill -9 and a restart on the same port; `stop()`, `kill()`
(SIGKILL, as in a crash) and `start()` again. The bench finds the binary itself
(`find_redis_binary()`) and passes it. Given none, the server calls `require_redis_binary()`,
which skips the test when the binary is missing on a developer's machine and fails it under
CI=true, where Redis is a required part; it alone imports pytest, so the bench can use this
module where pytest is not installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import redis

from mailservice.testing.ports import free_port

MISSING = "redis-server is not installed (apt-get install redis-server)"


def find_redis_binary() -> str | None:
    """The path of redis-server, or None when it is not installed."""
    return shutil.which("redis-server")


def require_redis_binary() -> str:
    """For a test: the path of redis-server; without it the test is skipped (failed in CI)."""
    import pytest  # here, not at the top: the bench uses this module without pytest

    binary = find_redis_binary()
    if binary is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    return binary


class RedisServer:
    """redis-server on 127.0.0.1:<free port>, without persistence unless asked."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        appendonly: bool = False,
        binary: str | None = None,
    ) -> None:
        self.binary = binary or require_redis_binary()
        self.workdir = workdir
        self.port = port or free_port()
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start it and wait until it answers PING; RuntimeError when it does not in time."""
        self.process = subprocess.Popen(
            [
                self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "yes" if self.appendonly else "no",
                "--dir", str(self.workdir),
                "--protected-mode", "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.ping()
                    return self
                except redis.ConnectionError as exc:
                    if time.monotonic() > deadline or self.process.poll() is not None:
                        self.stop()
                        raise RuntimeError(
                            f"redis-server did not start on port {self.port}"
                        ) from exc
                    time.sleep(0.02)
        finally:
            client.close()

    def pids(self) -> list[int]:
        return [self.process.pid] if self.process is not None else []

    def flush(self) -> None:
        client = redis.Redis(port=self.port, socket_timeout=5)
        try:
            client.flushall()
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM, and SIGKILL if it has not exited within 10 s."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-command, as in a crash."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)
