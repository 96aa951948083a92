"""Leases and recovery: requests left unfinished by a process that died are sent by another.

A `LeaseKeeper` thread renews this process's lease on its requests in the store every third of
`lease_seconds`, and every half lease (and once at start) asks the store for unfinished
requests whose owner's lease ran out, claims them one by one (atomically: two processes never
both get one) and hands them to the pool. Each round, after the requests, it runs the other
recoveries it was given (the webhook notifier's, which takes up pending webhooks the same way),
so that they too run only while this process's lease is renewed.

Each recovery gets a deadline, ROUND_SHARE of the lease from its start, and claims nothing
after it (what is left waits for the next round), and the lease is renewed between
recoveries when a third of it has passed: a round's claims are store round trips (on SQLite
each may wait for another process's write lock), and a round that outlasted the lease would
let other processes take over, and send again, this process's unfinished requests. It does
nothing with a store that is not durable.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence

from mailservice.delivery.dispatcher import Dispatcher
from mailservice.errors import StoreError
from mailservice.senders import SenderDirectory
from mailservice.stores.contract import StatusStore

logger = logging.getLogger(__name__)

PURGE_INTERVAL = 60.0
ROUND_SHARE = 0.1  # of lease_seconds: the time one recovery of a round may take (3 s of 30)


class LeaseKeeper:
    """Keeps this process's lease alive and takes over orphaned requests."""

    def __init__(
        self,
        store: StatusStore,
        pool: Dispatcher,
        senders: SenderDirectory,
        lease_seconds: float = 30.0,
        recoveries: Sequence[Callable[[float], int]] = (),
    ) -> None:
        self.store = store
        self.pool = pool
        self.senders = senders
        self.lease_seconds = lease_seconds
        # Each takes up what stopped processes left of its own, until the deadline it is given.
        self.recoveries = tuple(recoveries)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Take the lease and recover what is waiting, then keep at it on a thread."""
        if not self.store.durable or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="lease", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        beat = self.lease_seconds / 3
        next_recovery = next_purge = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                self.store.heartbeat(self.pool.owner, self.lease_seconds)
                renewed = now
                if now >= next_recovery:
                    for recover in (self.recover, *self.recoveries):
                        if time.monotonic() - renewed >= beat:
                            self.store.heartbeat(self.pool.owner, self.lease_seconds)
                            renewed = time.monotonic()
                        recover(time.monotonic() + self.lease_seconds * ROUND_SHARE)
                    next_recovery = now + self.lease_seconds / 2
                if now >= next_purge:
                    self.store.purge_expired()
                    next_purge = now + PURGE_INTERVAL
            except StoreError as exc:
                logger.warning("lease upkeep failed: %s", exc)
            except Exception:  # the thread must outlive a bug in one round
                logger.exception("lease upkeep failed")
            self._stop.wait(beat)

    def recover(self, deadline: float = math.inf) -> int:
        """Claim orphaned requests while the pool has room, until `deadline` (a
        time.monotonic() value); how many were taken up."""
        taken = 0
        for request_id in self.store.orphans(self.pool.room()):
            if time.monotonic() >= deadline:
                break  # the rest are orphans still: the next round takes them
            claimed = self.store.claim(request_id, self.pool.owner)
            if claimed is None:
                continue  # another process was quicker, or it finished
            record, payload = claimed
            self.pool.resume(record, payload, self.senders.by_email(record.sender))
            taken += 1
        if taken:
            logger.info("recovered %d unfinished request(s) from stopped processes", taken)
        return taken

    def stop(self) -> None:
        """Stop and give the lease up, so that another process takes over what is left."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.store.durable:
            try:
                self.store.heartbeat(self.pool.owner, 0)
            except StoreError as exc:
                logger.warning("could not give the lease up: %s", exc)
