"""Run `python mail_server.py` as a real process on a free port, and talk to it over HTTP."""

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
from typing import Any

from mailservice.testing.smtp_servers import free_port

ROOT = Path(__file__).resolve().parent.parent


class ServiceProcess:
    """The service in its own process; `env` adds to the current environment."""

    def __init__(self, cwd: Path, env: dict[str, str], args: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.cwd = cwd
        self.env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port), **env}
        self.args = args
        self.process: subprocess.Popen[str] | None = None
        # A file, not a pipe: a chatty process must never block on a full pipe buffer.
        self.log_path = cwd / f"service-{self.port}.out"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> ServiceProcess:
        with self.log_path.open("a") as out:
            self.process = subprocess.Popen(
                [sys.executable, str(ROOT / "mail_server.py"), *self.args],
                cwd=self.cwd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                status, _, _ = self.request("GET", "/healthz")
                if status == 200:
                    return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"service did not start:\n{self.output}")
            time.sleep(0.05)

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], Any]:
        """(status, headers, JSON body or None) of one HTTP request."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                raw = response.read()
                return response.status, dict(response.headers), json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            exc.close()
            return exc.code, dict(exc.headers), json.loads(raw) if raw else None

    @property
    def output(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the process and wait for it; its exit code."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        code = self.process.returncode
        self.process = None
        return code
