"""A Celery worker, and Flower, as processes of their own, started as an operator runs them.

`CeleryWorker(workdir, env)` runs `python -m celery -A mailservice.celery_worker worker` with the
prefork pool from the source checkout (on PYTHONPATH, so any `workdir` will do), with `env` added
to the current environment; its output goes to a log file in `workdir`, never to a pipe that
could fill and block it. It depends on the app module only through that command line, so
`app_module` can name another one (the harness's own test runs a tiny app of its own).
`start()` returns once the worker logs "<name>@<host> ready.", i.e. it consumes from the broker.
`stop()` is what a deploy does: SIGTERM to the main process alone, Celery's warm shutdown (the
tasks it runs finish, the rest stays on the broker). `kill()` is what a host crash does: SIGKILL
to the whole process group, the main process and its pool children at once, which is why the
worker runs in a session of its own. `FlowerProcess` runs Celery's Flower dashboard the same way.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

from mailservice.testing.ports import free_port
from mailservice.testing.service_process import ROOT, children, stat_fields

# Start-up: the worker imports Celery, the app and the service's packages, forks its pool and
# connects to the broker before it logs "ready."; on the 2-core machine shared with other
# people's tests that has taken several seconds, so the deadline is generous. A broker that does
# not answer makes Celery retry forever: the deadline is what turns that into an error.
START_TIMEOUT = 60.0
# Warm shutdown waits for the running tasks; a delivery attempt is bounded by its SMTP
# time-outs, well under this. Past it the whole group is killed, as a supervisor would.
STOP_TIMEOUT = 40.0
# How long to wait for a process group that got SIGKILL to be gone: the kernel ends it at once,
# only the reaping can lag.
KILL_TIMEOUT = 10.0
POLL_INTERVAL = 0.05
DEFAULT_APP = "mailservice.celery_worker"


class CeleryDidNotStart(RuntimeError):
    """The process exited, or did not become ready, before the start-up deadline."""


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group: what a kill of the group leaves."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = stat_fields(int(entry))
            except (OSError, ValueError, IndexError):
                continue
            if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
                found.append(int(entry))
    return found


class _CeleryProcess:
    """What the worker and Flower share: the environment, the log, the signals."""

    def __init__(self, workdir: Path, env: dict[str, str], label: str, log_name: str) -> None:
        self.workdir = workdir
        self.label = label
        # TMPDIR in the workdir (unless `env` names one): the prefork pool's pymp-* folders,
        # which a killed worker never removes, stay with the test's files instead of /tmp.
        merged = {**os.environ, "TMPDIR": str(workdir), **env}
        # The checkout first, so `mailservice` is this one whatever else PYTHONPATH names.
        paths = [str(ROOT), *(p for p in merged.get("PYTHONPATH", "").split(os.pathsep) if p)]
        merged["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        self.env = merged
        self.log_path = workdir / log_name
        self.process: subprocess.Popen[bytes] | None = None
        self._log_start = 0

    def command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = START_TIMEOUT) -> Self:
        """Start it; return once it is ready. CeleryDidNotStart (with its log's tail) otherwise."""
        if self.running:
            raise RuntimeError(f"{self.label} is running already")
        # Readiness is read from what this start wrote: a restart appends to the same log.
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                code = self.process.poll()
                self.kill()
                reason = f"exited with {code}" if code is not None else f"not ready in {timeout}s"
                raise CeleryDidNotStart(f"{self.label} {reason}:\n{self.log_tail(40)}")
            time.sleep(POLL_INTERVAL)
        return self

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def children(self) -> list[int]:
        """The main process's direct children: the prefork pool's processes."""
        process = self.process
        return children(process.pid) if process is not None and process.poll() is None else []

    @property
    def output(self) -> str:
        """Everything the process wrote so far (every start of it)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.output.splitlines()[-lines:])

    def _new_output(self) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_start)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM to the main process only (Celery's warm shutdown); past `timeout`, SIGKILL to
        the group. The exit code, or None when nothing was running."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with self.log_path.open("ab") as log:
                log.write(
                    f"\n--- {process.pid} still running {timeout}s after SIGTERM ---\n".encode()
                )
        # Also after a clean exit: a pool child that outlived its parent must not outlive the test.
        return self.kill()

    def kill(self) -> int | None:
        """SIGKILL to the whole group, as in a host crash; waits until none of it is left.
        The main process's exit code, or None when nothing was running."""
        process, self.process = self.process, None
        if process is None:
            return None
        pgid = process.pid  # start_new_session: the main process leads its own group
        # The group's id cannot be taken by another while the leader is unreaped (poll() is
        # None) or any member is left, so signalling it then reaches only this worker's processes.
        if process.poll() is None or group_members(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        code = process.wait(timeout=KILL_TIMEOUT)
        deadline = time.monotonic() + KILL_TIMEOUT
        while left := group_members(pgid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes {left} of group {pgid} survived SIGKILL")
            time.sleep(POLL_INTERVAL)
        return code


class CeleryWorker(_CeleryProcess):
    """`celery worker` with `concurrency` prefork processes (or threads, with `pool`
    "threads"), named `<name>@<host>`."""

    def __init__(
        self,
        workdir: Path,
        env: dict[str, str],
        concurrency: int = 2,
        name: str = "w1",
        args: tuple[str, ...] = (),
        app_module: str = DEFAULT_APP,
        pool: str = "prefork",
    ) -> None:
        super().__init__(workdir, env, f"celery worker {name}", f"celery-{name}.log")
        self.concurrency = concurrency
        self.pool = pool
        self.name = name
        self.args = args
        self.app_module = app_module
        # Celery logs "<hostname> ready." (apps/worker.py, on_consumer_ready) once it consumes;
        # %h becomes the machine's name, so match the node name up to it.
        self._ready_line = re.compile(rf"\b{re.escape(name)}@\S+ ready\.\s*$", re.MULTILINE)

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", self.app_module, "worker",
            "--pool", self.pool, "--concurrency", str(self.concurrency),
            "--loglevel", "INFO", "--hostname", f"{self.name}@%h",
            "--without-gossip", "--without-mingle", *self.args,
        ]  # fmt: skip

    def _ready(self) -> bool:
        return self._ready_line.search(self._new_output()) is not None


class FlowerProcess(_CeleryProcess):
    """Celery's Flower on 127.0.0.1:`port` (a free one when None), behind HTTP basic auth
    `basic_auth` ("user:password"); ready once its port answers HTTP, whatever the status."""

    def __init__(
        self,
        workdir: Path,
        env: dict[str, str],
        port: int | None = None,
        basic_auth: str = "admin:admin",
        app_module: str = DEFAULT_APP,
    ) -> None:
        self.port = port or free_port()
        super().__init__(workdir, env, f"flower on {self.port}", f"flower-{self.port}.log")
        self.basic_auth = basic_auth
        self.app_module = app_module

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", self.app_module, "flower",
            f"--port={self.port}", "--address=127.0.0.1", f"--basic-auth={self.basic_auth}",
        ]  # fmt: skip

    def _ready(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", "/")
            conn.getresponse().read()
            return True
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()
