"""The service as a process of its own, started as a user runs it, for tests and the bench.

`ServiceProcess(workdir, env)` runs `python mail_server.py` (kind "plain") or
`gunicorn -c gunicorn.conf.py 'mail_server:create_app()'` (kind "gunicorn") from the source
checkout, on a free loopback port, in `workdir`, with `env` added to the current environment;
its output goes to a log file there, never to a pipe that could fill and block it. `start()`
returns once /healthz answers and, when GUNICORN_WORKERS is given, every gunicorn worker is up;
`stop()` signals it, waits, and kills it past the time-out (writing its threads' stacks to the
log first when py-spy is installed). `request()` makes one JSON call. `children()` reads a
process's children from /proc, as the bench does for its CPU and memory readings.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mailservice.testing.ports import free_port

ROOT = Path(__file__).resolve().parents[2]  # the checkout: mail_server.py, gunicorn.conf.py
KINDS = ("plain", "gunicorn")


class ServiceDidNotStart(RuntimeError):
    """The process exited, or /healthz did not answer, before the start-up deadline."""


def stat_fields(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name (which may hold spaces)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def children(pid: int) -> list[int]:
    """Direct children of a process (gunicorn's workers of its master)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(stat_fields(int(entry))[1]) == pid:
                    found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found


class ServiceProcess:
    """The service on 127.0.0.1:<free port>; `args` go to mail_server.py or to gunicorn."""

    def __init__(
        self, workdir: Path, env: dict[str, str], kind: str = "plain", args: tuple[str, ...] = ()
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown service kind {kind!r}; one of {', '.join(KINDS)}")
        self.kind = kind
        self.workdir = workdir
        self.args = args
        self.port = free_port()
        self.env = {**os.environ, **env, "HOST": "127.0.0.1", "PORT": str(self.port)}
        self.log_path = workdir / f"{kind}-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        if self.kind == "gunicorn":
            # gunicorn 27 listens on a control socket, by default one path per user: keep
            # each one's apart from any other gunicorn on the machine.
            control = str(self.workdir / f"gunicorn-{self.port}.ctl")
            return [
                sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"),
                "--control-socket", control, *self.args, "mail_server:create_app()",
            ]  # fmt: skip
        return [sys.executable, str(ROOT / "mail_server.py"), *self.args]

    def start(self, timeout: float = 30.0) -> ServiceProcess:
        """Start it; return once it serves. ServiceDidNotStart (with its log) otherwise."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), cwd=self.workdir, env=self.env, stdout=log, stderr=log
            )
        workers = int(self.env.get("GUNICORN_WORKERS") or 0) if self.kind == "gunicorn" else 0
        deadline = time.monotonic() + timeout
        while not (self._healthy() and len(children(self.process.pid)) >= workers):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ServiceDidNotStart(f"{self.kind} did not start:\n{self.log_tail(40)}")
            time.sleep(0.05)
        return self

    def _healthy(self) -> bool:
        try:
            return self.request("GET", "/healthz", timeout=2)[0] == 200
        except (OSError, http.client.HTTPException, ValueError):
            return False

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, dict[str, str], Any]:
        """(status, headers, JSON body or None) of one HTTP request."""
        data = json.dumps(body).encode() if body is not None else None
        sent = {"Content-Type": "application/json"} if data is not None else {}
        sent.update(headers or {})
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, data, sent)
            response = conn.getresponse()
            raw = response.read()
            return response.status, dict(response.headers), json.loads(raw) if raw else None
        finally:
            conn.close()

    def pids(self) -> list[int]:
        """The process and, for gunicorn, its workers."""
        if self.process is None:
            return []
        return [self.process.pid, *children(self.process.pid)]

    @property
    def output(self) -> str:
        """Everything the process wrote so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.output.splitlines()[-lines:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int | None:
        """Send `sig` (SIGTERM: the service drains), SIGKILL after `timeout`; the exit code,
        or None when nothing was running."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(sig)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._dump_stacks(process.pid)
            process.kill()
            return process.wait()

    def _dump_stacks(self, pid: int) -> None:
        """py-spy's dump of every thread, into the log: a hang at shutdown can be read later."""
        py_spy = shutil.which("py-spy") or shutil.which(
            "py-spy", path=str(Path(sys.executable).parent)
        )
        if py_spy is None:
            return
        with self.log_path.open("ab") as log:
            log.write(f"\n--- no exit {pid} after the signal: py-spy dump ---\n".encode())
            log.flush()
            for target in [pid, *children(pid)]:
                subprocess.run(
                    [py_spy, "dump", "--pid", str(target)],
                    stdout=log,
                    stderr=log,
                    timeout=30,
                    check=False,
                )
