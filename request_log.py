"""The request log of API.md section 5: one seed-format line per accepted and per ended request.

    Request ID: <id>, Sender: <a>, Recipient: <a>;<b>, Date: 2026-11-20 16:14:34, Status: sent

Lines from threads and processes never interleave: one thread per process writes them, and each
write takes an exclusive `flock` on a sidecar `.lock` file, reopens the log if another process
rotated it, writes one whole line and rotates by size. Values are stripped of line breaks so
that no value can forge a line.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from logging.handlers import QueueListener, RotatingFileHandler


def _one_line(value: str) -> str:
    return " ".join(value.splitlines()).replace("\0", " ")


class _LockedRotatingFileHandler(RotatingFileHandler):
    """RotatingFileHandler that is safe across processes sharing one file."""

    def __init__(self, filename: str, max_bytes: int, backups: int) -> None:
        super().__init__(filename, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self._lock_fd = -1
        self._lock_pid = 0

    def _process_lock_fd(self) -> int:
        """The lock file, opened once per process: a descriptor inherited through fork()
        would share its flock with the parent and lock nothing between them."""
        if self._lock_pid != os.getpid():
            self._lock_fd = os.open(self.baseFilename + ".lock", os.O_CREAT | os.O_RDWR, 0o600)
            self._lock_pid = os.getpid()
        return self._lock_fd

    def _reopen_if_rotated(self) -> None:
        if self.stream is None:
            return
        try:
            on_disk = os.stat(self.baseFilename)
        except FileNotFoundError:
            on_disk = None
        opened = os.fstat(self.stream.fileno())
        if on_disk is None or (on_disk.st_dev, on_disk.st_ino) != (opened.st_dev, opened.st_ino):
            self.stream.close()
            self.stream = self._open()

    def emit(self, record: logging.LogRecord) -> None:
        lock_fd = self._process_lock_fd()
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        try:
            self._reopen_if_rotated()
            super().emit(record)
            self.flush()
        finally:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        super().close()
        if self._lock_fd >= 0 and self._lock_pid == os.getpid():
            os.close(self._lock_fd)
        self._lock_fd = -1


class RequestLog:
    """Appends request lines to EMAIL_LOG; never a subject, body, key or password.

    `write()` only queues the line: one listener thread per process writes the lines in order
    (logging's QueueListener), so request and sending threads never wait for the
    file lock. `close()` writes what is queued before it returns.
    """

    def __init__(self, path: str, max_bytes: int = 10 * 1024 * 1024, backups: int = 5) -> None:
        self.path = path
        self._file_handler = _LockedRotatingFileHandler(path, max_bytes, backups)
        self._file_handler.setFormatter(logging.Formatter("%(message)s"))
        # Records go straight onto the queue: a QueueHandler would serialise every writer on
        # its own lock (12% of a worker's GIL time in py-spy), which SimpleQueue doesn't need.
        self._lines: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self._listener = QueueListener(self._lines, self._file_handler)
        self._listener.start()
        self._lock = threading.Lock()
        self._closed = False

    def write(
        self,
        request_id: str,
        sender: str,
        recipients: Iterable[str],
        status: str,
        reason: str | None = None,
        when: datetime | None = None,
    ) -> None:
        """One line: `Status: <status>` or `Status: failed (<reason>)`."""
        when = (when or datetime.now(UTC)).astimezone(UTC)
        shown = f"{status} ({reason})" if reason else status
        line = (
            f"Request ID: {_one_line(request_id)}, Sender: {_one_line(sender)}, "
            f"Recipient: {_one_line(';'.join(recipients))}, "
            f"Date: {when:%Y-%m-%d %H:%M:%S}, Status: {_one_line(shown)}"
        )
        self._lines.put(logging.LogRecord("request_log", logging.INFO, "", 0, line, None, None))

    def flush(self) -> None:
        """Wait until every queued line is in the file."""
        with self._lock:
            if not self._closed:
                self._listener.stop()  # writes what is queued
                self._listener.start()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._listener.stop()
            self._file_handler.close()
