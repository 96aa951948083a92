"""A real `redis-server` for one test session, on a free loopback port, that tests may stop.

Without the binary a test that needs Redis is skipped on a developer's machine and fails under
CI=true, where Redis is a required part.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis

from mailservice.testing.smtp_servers import free_port


def require_redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return binary


class RedisServer:
    """redis-server on 127.0.0.1:<free port>, without persistence unless asked."""

    def __init__(self, workdir: Path, port: int | None = None, appendonly: bool = False) -> None:
        self.binary = require_redis_binary()
        self.workdir = workdir
        self.port = port or free_port()
        self.appendonly = appendonly  # keeps what it was given across a kill -9 and a restart
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
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
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    client.ping()
                    return self
                except redis.ConnectionError:
                    if time.monotonic() > deadline or self.process.poll() is not None:
                        raise
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-command, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def flush(self) -> None:
        client = redis.Redis(port=self.port)
        try:
            client.flushall()
        finally:
            client.close()
