"""The counting SMTP sink, in its own process so that its CPU is not the service's or the bench's.

`python -m bench.sink --port N` accepts every message on 127.0.0.1:N and keeps only counts:
messages (DATA), SMTP sessions (connections made), bytes, and the wall-clock time (time.time(),
comparable across processes) of the first and last message. It prints `READY <port>` once
listening, then answers each line on stdin: `stats` -> one JSON line, `reset` -> zero the counts
and print `OK`, `quit` (or end of input) -> stop. `SinkProcess` drives it from the bench.
"""

from __future__ import annotations

import argparse
import json
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from aiosmtpd.smtp import SMTP as SmtpProtocol
from aiosmtpd.smtp import Envelope, Session

from mailservice.testing.smtp_servers import CountingController


@dataclass(frozen=True, slots=True)
class SinkStats:
    """The sink's counts since the last reset."""

    messages: int
    sessions: int
    bytes: int
    first_message: float | None
    last_message: float | None


class CountingHandler:
    """Counts messages and sessions; keeps no content."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.messages = 0
            self.sessions = 0
            self.bytes = 0
            self.first_message: float | None = None
            self.last_message: float | None = None

    def connection_opened(self, session: SmtpProtocol) -> None:
        with self._lock:
            self.sessions += 1

    def connection_closed(self, session: SmtpProtocol) -> None:
        pass

    async def handle_DATA(self, server: SmtpProtocol, session: Session, envelope: Envelope) -> str:
        now = time.time()
        size = len(envelope.original_content or b"")
        with self._lock:
            self.messages += 1
            self.bytes += size
            if self.first_message is None:
                self.first_message = now
            self.last_message = now
        return "250 OK"

    def stats(self) -> SinkStats:
        with self._lock:
            return SinkStats(
                self.messages, self.sessions, self.bytes, self.first_message, self.last_message
            )


def serve(port: int) -> int:
    """Run the sink until `quit` or end of input on stdin."""
    handler = CountingHandler()
    controller = CountingController(
        handler,
        hostname="127.0.0.1",
        port=port,
        ready_timeout=10,
        enable_SMTPUTF8=True,
        timeout=600,
    )
    controller.start()
    print(f"READY {port}", flush=True)
    try:
        for line in sys.stdin:
            command = line.strip()
            if command == "stats":
                stats = handler.stats()
                print(json.dumps({name: getattr(stats, name) for name in stats.__slots__}))
            elif command == "reset":
                handler.reset()
                print("OK")
            elif command == "quit":
                break
            else:
                print(json.dumps({"error": f"unknown command {command!r}"}))
            sys.stdout.flush()
    finally:
        controller.stop()
    return 0


class SinkProcess:
    """`python -m bench.sink` as a child process of the bench."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self._lines: queue.Queue[str] = queue.Queue()

    def start(self, timeout: float = 15.0) -> SinkProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.sink", "--port", str(self.port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()
        line = self._readline(timeout)
        if not line.startswith("READY"):
            self.stop()
            raise RuntimeError(f"SMTP sink did not start: {line!r}")
        self.reset()  # forget the Controller's own readiness probe
        return self

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self._lines.put(line.strip())

    def _readline(self, timeout: float) -> str:
        """One line of the sink's output, or "" when none comes within `timeout` seconds."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            return ""

    def _command(self, command: str) -> str:
        with self._lock:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError("the SMTP sink is not running")
            assert self.process.stdin is not None
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
            return self._readline(10.0)

    def stats(self) -> SinkStats:
        return SinkStats(**json.loads(self._command("stats")))

    def pids(self) -> list[int]:
        return [self.process.pid] if self.process is not None else []

    def reset(self) -> None:
        if self._command("reset") != "OK":
            raise RuntimeError("the SMTP sink did not reset")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        try:
            if process.poll() is None and process.stdin is not None:
                process.stdin.write("quit\n")
                process.stdin.close()
            process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Counting SMTP sink on 127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    return serve(parser.parse_args(argv).port)


if __name__ == "__main__":
    sys.exit(main())
