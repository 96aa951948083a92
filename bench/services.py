"""The processes under test, started as a user runs them in production, and /proc readings.

`ServiceProcess` runs `gunicorn -c gunicorn.conf.py 'mail_server:create_app()'` or
`python mail_server.py` on a free loopback port with the bench's environment, its output going
to a log file (never a pipe that could fill). `RedisProcess` is a throw-away `redis-server`.
CPU time and peak RSS are read from /proc for a process and its children (gunicorn's workers).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.workload import free_port

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name (which may hold spaces)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def children(pid: int) -> list[int]:
    """Direct children of a process."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(_stat_fields(int(entry))[1]) == pid:
                    found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes, in seconds (processes gone are skipped)."""
    ticks = 0
    for pid in pids:
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / CLOCK_TICKS


def memory_kb(pids: list[int], field: str) -> int:
    """The sum of one /proc/<pid>/status field (VmRSS, VmHWM) over these processes."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


class ServiceProcess:
    """The service on 127.0.0.1:<free port>; `kind` is "gunicorn" or "plain"."""

    def __init__(self, kind: str, env: dict[str, str], workdir: Path) -> None:
        if kind not in ("gunicorn", "plain"):
            raise ValueError(f"unknown service kind {kind!r}")
        self.kind = kind
        self.port = free_port()
        self.workdir = workdir
        self.env = {**os.environ, **env, "HOST": "127.0.0.1", "PORT": str(self.port)}
        self.log_path = workdir / f"{kind}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        if self.kind == "gunicorn":
            config = str(ROOT / "gunicorn.conf.py")
            # gunicorn 27 listens on a control socket, by default one path per user: keep
            # ours apart from any other gunicorn on the machine.
            control = str(self.workdir / "gunicorn.ctl")
            return [
                sys.executable, "-m", "gunicorn", "-c", config,
                "--control-socket", control, "mail_server:create_app()",
            ]  # fmt: skip
        return [sys.executable, str(ROOT / "mail_server.py")]

    def start(self, timeout: float = 30.0) -> ServiceProcess:
        """Start it; wait until /healthz answers, every gunicorn worker is up, and all idle."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), cwd=self.workdir, env=self.env, stdout=log, stderr=log
            )
        expected = int(self.env.get("GUNICORN_WORKERS", "2")) if self.kind == "gunicorn" else 0
        deadline = time.monotonic() + timeout
        while not (self._healthy() and len(children(self.process.pid)) >= expected):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.kind} did not start:\n{self.log_tail()}")
            time.sleep(0.1)
        self._settle(deadline)
        return self

    def _settle(self, deadline: float, quiet: float = 0.02, interval: float = 0.3) -> None:
        """Wait until the processes are idle: a gunicorn worker answers /healthz while its
        sibling may still be importing the app, whose CPU would count against the burst."""
        before = cpu_seconds(self.pids())
        while time.monotonic() < deadline:
            time.sleep(interval)
            now = cpu_seconds(self.pids())
            if now - before < quiet:
                return
            before = now

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=2) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def pids(self) -> list[int]:
        """The process and, for gunicorn, its workers."""
        if self.process is None:
            return []
        return [self.process.pid, *children(self.process.pid)]

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 40.0) -> int | None:
        """SIGTERM (the service drains), then SIGKILL after `timeout`; the exit code.

        A process that does not exit in time has its threads' stacks written to its log first,
        by py-spy when it is installed, so that a hang at shutdown can be read afterwards.
        """
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._dump_stacks(process.pid)
            process.kill()
            return process.wait()

    def _dump_stacks(self, pid: int) -> None:
        py_spy = shutil.which("py-spy") or shutil.which(
            "py-spy", path=str(Path(sys.executable).parent)
        )
        if py_spy is None:
            return
        with self.log_path.open("ab") as log:
            log.write(f"\n--- no exit {pid} after SIGTERM: py-spy dump ---\n".encode())
            log.flush()
            targets = [pid, *children(pid)]
            for target in targets:
                subprocess.run(
                    [py_spy, "dump", "--pid", str(target)],
                    stdout=log,
                    stderr=log,
                    timeout=30,
                    check=False,
                )


class RedisProcess:
    """`redis-server` on 127.0.0.1:<free port>, without persistence."""

    def __init__(self, workdir: Path) -> None:
        self.binary = shutil.which("redis-server")
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisProcess:
        import redis

        if self.binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.process = subprocess.Popen(
            [
                self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
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
                except redis.ConnectionError:
                    if time.monotonic() > deadline or self.process.poll() is not None:
                        self.stop()
                        raise RuntimeError("redis-server did not start") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def pids(self) -> list[int]:
        return [self.process.pid] if self.process is not None else []

    def flush(self) -> None:
        import redis

        client = redis.Redis(port=self.port, socket_timeout=5)
        try:
            client.flushall()
        finally:
            client.close()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
