"""The request log of API.md section 5: one seed-format line per accepted and per ended request
(queued or scheduled; sent, failed, expired or canceled).

    Request ID: <id>, Sender: <a>, Recipient: <a>;<b>, Date: 2026-11-20 16:14:34, Status: sent

It owns EMAIL_LOG, its rotated copies, its sidecar `.lock` file and the one thread per process
that writes them. `write()` only puts the line on a lock-free queue; the writer thread takes the
lines off in order and appends them in batches, each under an exclusive `flock` on the `.lock`
file, after reopening the log if another process rotated it. The file rotates by size between
whole lines, so lines from threads and processes never interleave. Values are stripped of line
breaks so that no value can forge a line.

A full or failing disk does not stop the log. Any `OSError` on the way (write, rotation, reopen,
lock) is survived: the part line a failed write left in the file is cut back off, and the lines
not written are tried again, in order, after 0.1 s, doubling up to 5 s, until the disk takes them.
The service's own log says so once when writes start failing, every minute while they fail, and
once when the lines that waited are written, with how many were written late and how many were
dropped.

Memory is bounded: at most `max_pending` lines (default 100,000) wait on the queue, plus the one
batch (at most 1,000 lines) in the writer's hands; a line beyond that is dropped and counted.
100,000 waiting lines of the usual 130 bytes took 21 MB of RSS (measured) and, at 1,000 requests/s
(two lines each), ride out 50 s of a full disk before any is dropped. The status store keeps every
request's outcome either way, so the log is what gives way rather than the process's memory.

`flush()` and `close()` wait at most their `timeout` and return whether every line was written;
lines `close()` had to leave unwritten are counted in a warning.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from mailservice.events.bus import Accepted, Event, Finished
from mailservice.events.log_file import LockedRotatingFile
from mailservice.stores.contract import EmailStatus

logger = logging.getLogger(__name__)

BATCH_LINES = 1000  # lines taken off the queue at a time and written under one flock
RETRY_FIRST, RETRY_MAX = 0.1, 5.0  # seconds between attempts while writes fail
REPORT_EVERY = 60.0  # seconds between warnings while lines fail or are dropped
# The final statuses whose line gives the reason: `Status: failed (<error>)`; sent and
# canceled have none (API.md section 5).
EXPLAINED = frozenset({EmailStatus.FAILED, EmailStatus.EXPIRED})


def _one_line(value: str) -> str:
    return " ".join(value.splitlines()).replace("\0", " ")


@dataclass(frozen=True, slots=True)
class _Flush:
    """Queued by flush(): set once every line queued before it is in the file."""

    done: threading.Event = field(default_factory=threading.Event)


class _Stop:
    """Queued by close(): the writer ends after the lines before it."""


_STOP = _Stop()
_Item = bytes | _Flush | _Stop


class RequestLog:
    """Appends request lines to EMAIL_LOG; never a subject, body, key or password.

    `write()` only queues the line, so request and sending threads never wait for the file,
    its lock or a failing disk; one writer thread per process writes the lines in order.
    """

    def __init__(
        self,
        path: str,
        max_bytes: int = 10 * 1024 * 1024,
        backups: int = 5,
        max_pending: int = 100_000,
    ) -> None:
        self.path = path
        self.max_pending = max_pending
        self._file = LockedRotatingFile(path, max_bytes, backups)
        # A SimpleQueue and no lock on the way in: a QueueHandler serialised every writer on its
        # own lock (12% of a worker's GIL time in py-spy).
        self._lines: queue.SimpleQueue[str | _Flush | _Stop] = queue.SimpleQueue()
        self._drop_lock = threading.Lock()  # taken only on the way to dropping a line
        self._dropped = 0
        self._wake = threading.Event()  # cuts a wait between attempts short
        self._abandon = False  # close() waited long enough: stop retrying
        self._closed = False
        self._close_lock = threading.Lock()
        self._clean = True  # every line written, as far as close() knows
        # The writer thread's own: outage and drop accounting.
        self._down_since: float | None = None
        self._late = 0
        self._reported_drops = 0
        self._last_report = 0.0
        self._writer = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._writer.start()

    def write(
        self,
        request_id: str,
        sender: str,
        recipients: Iterable[str],
        status: str,
        reason: str | None = None,
        when: datetime | None = None,
    ) -> None:
        """One line: `Status: <status>`, or with a reason `Status: failed (<reason>)`."""
        if self._closed:
            logger.warning("request log closed, line not written request_id=%s", request_id)
            return
        if self._lines.qsize() >= self.max_pending:  # qsize() of a SimpleQueue is exact
            with self._drop_lock:
                self._dropped += 1
            return
        when = (when or datetime.now(UTC)).astimezone(UTC)
        shown = f"{status} ({reason})" if reason else status
        self._lines.put(
            f"Request ID: {_one_line(request_id)}, Sender: {_one_line(sender)}, "
            f"Recipient: {_one_line(';'.join(recipients))}, "
            f"Date: {when:%Y-%m-%d %H:%M:%S}, Status: {_one_line(shown)}"
        )

    def on_event(self, event: Event) -> None:
        """The line an event calls for: `queued` (or `scheduled`) when accepted, the final
        status when ended, with its reason when `failed` or `expired`."""
        record = event.record
        if isinstance(event, Accepted):  # at its acceptance (a manual retry's: at the retry)
            status, reason, when = str(record.status), None, record.updated_at
        elif isinstance(event, Finished):
            explained = record.status in EXPLAINED
            status, reason, when = str(record.status), record.error if explained else None, None
        else:  # attempts and webhook tries write no line (API.md section 5)
            return
        self.write(record.request_id, record.sender, record.recipients, status, reason, when)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait up to `timeout` s until every line queued so far is in the file; whether it is."""
        if self._closed:
            return self._clean
        marker = _Flush()
        self._lines.put(marker)
        self._wake.set()  # a writer waiting out a failed write tries again now
        return marker.done.wait(timeout)

    def close(self, timeout: float = 5.0) -> bool:
        """Write what is queued, waiting up to `timeout` s; whether every line was written."""
        with self._close_lock:
            if self._closed:
                return self._clean
            self._closed = True
            self._lines.put(_STOP)
            self._wake.set()
            self._writer.join(timeout)
            if self._writer.is_alive():
                self._abandon = True
                self._wake.set()
                self._writer.join(1.0)
            if self._writer.is_alive():
                logger.warning("request log %s: its writer did not stop", self.path)
                self._clean = False
            return self._clean

    # -- the writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        """Write lines in order, each tried until the disk takes it, until close()."""
        batch: deque[_Item] = deque()
        delay = 0.0
        while True:
            self._take(batch)
            try:
                stop = self._write(batch)
            except OSError as exc:
                self._report_failure(exc, batch)
                delay = min(max(delay * 2, RETRY_FIRST), RETRY_MAX)
                self._wake.wait(delay)
                self._wake.clear()
                if self._abandon:
                    self._finish(batch)
                    return
                continue
            except Exception:  # the thread's one catch-all: a bug must not stop the log
                logger.exception("request log %s: a line was dropped", self.path)
                self._drop_head(batch)
                continue
            delay = 0.0
            self._report_success(batch)
            if stop:
                self._finish(batch)
                return

    def _take(self, batch: deque[_Item]) -> None:
        """Fill the batch from the queue, waiting for a first item when it is empty.

        While writes fail the batch stays full, so later lines wait on the queue, where
        `max_pending` bounds them.
        """
        while len(batch) < BATCH_LINES:
            try:
                item = self._lines.get(block=not batch)
            except queue.Empty:
                return
            if isinstance(item, str):
                # backslashreplace: a lone surrogate must not fail the line, nor forge one.
                batch.append(item.encode("utf-8", "backslashreplace") + b"\n")
            else:
                batch.append(item)

    def _write(self, batch: deque[_Item]) -> bool:
        """Write the batch's lines, answering flushes on the way; whether close() was reached."""
        if self._settle(batch):
            return True
        if not batch:
            return False
        with self._file.locked():
            while batch:
                lines: list[bytes] = []
                for item in batch:
                    if not isinstance(item, bytes):
                        break
                    lines.append(item)
                written = self._file.append(lines)
                for _ in range(written):
                    batch.popleft()
                if self._down_since is not None:
                    self._late += written
                if self._settle(batch):
                    return True
        return False

    @staticmethod
    def _settle(batch: deque[_Item]) -> bool:
        """Answer the flushes at the head of the batch; whether a stop is there."""
        while batch and not isinstance(head := batch[0], bytes):
            if isinstance(head, _Stop):
                return True
            batch.popleft()
            head.done.set()
        return False

    def _drop_head(self, batch: deque[_Item]) -> None:
        if batch:
            head = batch.popleft()
            if isinstance(head, _Flush):
                head.done.set()
            elif isinstance(head, bytes):
                with self._drop_lock:
                    self._dropped += 1

    def _waiting(self, batch: deque[_Item]) -> int:
        return sum(isinstance(item, bytes) for item in batch) + self._lines.qsize()

    def _report_failure(self, exc: OSError, batch: deque[_Item]) -> None:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since, self._late, self._last_report = now, 0, now
            logger.warning(
                "request log %s cannot be written (%s): keeping up to %d lines and retrying",
                self.path,
                exc,
                self.max_pending,
            )
        elif now - self._last_report >= REPORT_EVERY:
            self._last_report = now
            logger.warning(
                "request log %s still cannot be written after %.0f s (%s): %d lines waiting, "
                "%d dropped",
                self.path,
                now - self._down_since,
                exc,
                self._waiting(batch),
                self._dropped - self._reported_drops,
            )

    def _report_success(self, batch: deque[_Item]) -> None:
        # An outage ends when the lines that waited are written, so that the report can say
        # how many came late; a backlog that drains at disk speed takes well under a second.
        if self._down_since is not None:
            if any(isinstance(item, bytes) for item in batch) or not self._lines.empty():
                return
            dropped = self._dropped - self._reported_drops
            self._reported_drops += dropped
            logger.warning(
                "request log %s written again after %.0f s: %d lines written late, %d dropped",
                self.path,
                time.monotonic() - self._down_since,
                self._late,
                dropped,
            )
            self._down_since = None
        elif self._dropped > self._reported_drops:  # a disk too slow, though not failing
            now = time.monotonic()
            if now - self._last_report >= REPORT_EVERY:
                self._last_report = now
                dropped = self._dropped - self._reported_drops
                self._reported_drops += dropped
                logger.warning(
                    "request log %s falls behind: %d lines dropped (more than %d waiting)",
                    self.path,
                    dropped,
                    self.max_pending,
                )

    def _finish(self, batch: deque[_Item]) -> None:
        """The writer's end: count what close() leaves unwritten, then close the file."""
        while True:  # lines queued while close() ran, and flushes that raced it
            try:
                item = self._lines.get_nowait()
            except queue.Empty:
                break
            batch.append(b"" if isinstance(item, str) else item)
        unwritten = sum(isinstance(item, bytes) for item in batch)
        dropped = self._dropped - self._reported_drops
        self._clean = unwritten == 0
        if unwritten or dropped:
            logger.warning(
                "request log %s closed with %d lines unwritten and %d dropped",
                self.path,
                unwritten,
                dropped,
            )
        for item in batch:
            if isinstance(item, _Flush) and not unwritten:
                item.done.set()
        try:
            self._file.close()
        except OSError as exc:
            logger.warning("request log %s: closing it failed: %s", self.path, exc)
