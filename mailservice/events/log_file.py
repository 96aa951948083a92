"""The request log's file on disk: shared by processes, written in whole lines, rotated by size.

`LockedRotatingFile.locked()` takes an exclusive `flock` on a sidecar `.lock` file and reopens
the log if another process rotated it; `append()` writes whole lines and, when the disk takes
only part of a write, cuts the part line back off. Errors are raised as `OSError` for the
request log's writer (request_log.py) to retry.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(
    "mailservice.events.request_log"
)  # its lines belong to the request log's story


class LockedRotatingFile:
    """The log file shared by processes: whole lines appended under an flock, rotated by size.

    A write that fails leaves in the file only the whole lines the disk took, so a retry of
    the rest never duplicates or splits a line.
    """

    def __init__(self, path: str, max_bytes: int, backups: int) -> None:
        self.path = os.path.abspath(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self._fd = self._open()  # now, so that a missing folder is an error at start-up
        self._lock_fd = -1
        self._lock_pid = 0
        self._size = 0
        self._regular = True

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)

    def _process_lock_fd(self) -> int:
        """The lock file, opened once per process: a descriptor inherited through fork()
        would share its flock with the parent and lock nothing between them."""
        if self._lock_pid != os.getpid():
            self._lock_fd = os.open(self.path + ".lock", os.O_CREAT | os.O_RDWR, 0o600)
            self._lock_pid = os.getpid()
        return self._lock_fd

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the flock, with the descriptor on the file that is at `path` now."""
        lock_fd = self._process_lock_fd()
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        try:
            try:
                on_disk = os.stat(self.path)
            except FileNotFoundError:
                on_disk = None
            opened = os.fstat(self._fd)
            if on_disk is None or not os.path.samestat(on_disk, opened):
                self._reopen()
                opened = os.fstat(self._fd)
            self._size = opened.st_size
            # A character device (/dev/full, /dev/null) has no size to rotate or cut back.
            self._regular = stat.S_ISREG(opened.st_mode)
            yield
        finally:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)

    def _reopen(self) -> None:
        # The new file is opened before the old one is closed, so a failed open leaves the
        # descriptor usable and the next attempt finds the same state.
        new = self._open()
        old, self._fd = self._fd, new
        os.close(old)

    def append(self, lines: list[bytes]) -> int:
        """Write the leading lines that fit before the next rotation; how many went in.

        When the disk takes only part of the write, the whole lines it took stay and the rest
        is cut off; OSError is raised when not one line went in. Call inside `locked()`.
        """
        rotating = self._regular and self.max_bytes > 0 and self.backups > 0
        if rotating and self._size > 0 and self._size + len(lines[0]) > self.max_bytes:
            self._rotate()
        count, total = 0, 0
        for line in lines:
            if rotating and count and self._size + total + len(line) > self.max_bytes:
                break
            count, total = count + 1, total + len(line)
        data, done = memoryview(b"".join(lines[:count])), 0
        try:
            while done < len(data):
                written = os.write(self._fd, data[done:])
                if written == 0:
                    raise OSError(errno.ENOSPC, "write took no bytes")
                done += written  # a short write: a disk filling up took part of it
        except OSError:
            whole, kept = 0, 0
            for line in lines[:count]:
                if kept + len(line) > done:
                    break
                whole, kept = whole + 1, kept + len(line)
            self._cut_back(self._size + kept)
            self._size += kept
            if whole == 0:
                raise
            return whole  # the next call meets the error again, with nothing written
        self._size += total
        return count

    def _cut_back(self, size: int) -> None:
        """Remove the part line of a failed write: its retry writes the whole line again."""
        if not self._regular:
            return
        try:
            os.ftruncate(self._fd, size)  # shrinking needs no space, even on a full disk
        except OSError as exc:
            logger.warning("request log %s: part of a failed write stays: %s", self.path, exc)

    def _rotate(self) -> None:
        for i in range(self.backups - 1, 0, -1):
            if os.path.exists(f"{self.path}.{i}"):
                os.replace(f"{self.path}.{i}", f"{self.path}.{i + 1}")
        os.replace(self.path, self.path + ".1")
        self._reopen()
        self._size = 0

    def close(self) -> None:
        os.close(self._fd)
        if self._lock_fd >= 0 and self._lock_pid == os.getpid():
            os.close(self._lock_fd)
        self._lock_fd = -1
