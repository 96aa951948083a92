"""Webhooks: a request's final status POSTed to its `callback_url` and to WEBHOOK_URL.

`WebhookNotifier` subscribes to the EventBus. On `Finished` with the record's webhook
`pending` it only queues the delivery; its own threads (never the sending threads) make the
tries with `WebhookClient`. The targets are those at delivery time: the record's callback_url,
and `deployment_url`, this process's WEBHOOK_URL as it is now (a pending webhook follows a
changed WEBHOOK_URL). A record left with no target (accepted under a WEBHOOK_URL this process
does not have) has nothing owed: it is saved with webhook None, and the log says why. Each
target gets its own tries: TRIES in all, the first at once,
then after `backoff` seconds, doubling (120 s by default: 2, 4, 8, 16 and 32 minutes, about an
hour in all). When every target answered 2xx the record is saved `delivered`, when one ran out
of tries `failed`; `store.save()` keeps its owner check, and a save the store refuses is tried
again (SAVE_TRIES times, backing off) before it is logged as lost. Each failed try is logged
once with its request_id and the target's scheme and host (never its path, query, or the
secret); every try is announced on `events` as a `WebhookTried` (its target and outcome:
delivered, retrying or failed).

The body is the status of GET /email-status/<id> (tags and metadata included) with an `event`
member first, `email.` and the final status (`email.sent`, `email.failed`, `email.expired`,
`email.canceled`): every final status has its webhook; the bytes are the same on every try and every
target, only the timestamp and signature change. Delivery is at least once: a receiver dedupes
by `request_id`.

Durability: the record's webhook is already `pending` in its final save, so a durable store
keeps what is owed. `recover(deadline)` (run by the LeaseKeeper every round, after its lease
renewal) claims pending webhooks whose owner's lease ran out, or this process's own that it
holds no longer (a full queue), and queues them: at most RECOVER_MAX a round, and none once
the round's deadline passed (each claim is a store round trip, on the lease's thread, which
must not be late to renew the lease); the store's search goes on from round to round.
Memory is bounded: at most `max_pending` requests are held; past that a durable store keeps
the webhook pending for a later round, and the memory store fails it (logged). `flush()` (the
end of a drain) waits briefly for tries due now; `close()` stops the threads without waiting
out retries: on a durable store what is left stays pending for the next process, on the memory
store it is given up and counted in the log.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from mailservice.errors import StoreError, WebhookError
from mailservice.events.bus import Event, EventBus, Finished, WebhookTried
from mailservice.events.due_queue import DueQueue
from mailservice.events.webhook_client import WebhookClient, shown_target
from mailservice.stores.contract import StatusRecord, StatusStore, WebhookState

logger = logging.getLogger(__name__)

TRIES = 6  # per target: the first at once, then backoff, doubling
THREADS = 4  # delivery threads per process; each try holds one for at most WEBHOOK_TIMEOUT
MAX_PENDING = 10_000  # requests whose webhook this process holds in memory
RECOVER_MAX = 100  # webhooks claimed per recovery round at most
SAVE_TRIES, SAVE_FIRST, SAVE_MAX = 10, 1.0, 60.0  # an outcome the store refused: ~4 min in all
FLUSH_MAX = 5.0  # seconds a drain's flush waits at most for the tries due now
CLOSE_WAIT = 1.0  # seconds close() waits for tries under way


def webhook_body(record: StatusRecord) -> bytes:
    """The JSON every target of a request gets: `event` (`email.<its final status>`: sent,
    failed, expired or canceled), then the status as GET shows it."""
    event = f"email.{record.status}"
    return json.dumps({"event": event, **record.public()}, separators=(",", ":")).encode()


@dataclass(slots=True, eq=False)
class _Target:
    name: str  # how logs name it: callback_url or WEBHOOK_URL
    url: str
    tries: int = 0
    done: bool = False  # delivered, or its tries ran out


@dataclass(slots=True, eq=False)
class _Delivery:
    """One request's webhook while this process holds it."""

    record: StatusRecord
    body: bytes
    open: int  # targets without an outcome yet
    failed: bool = False  # a target ran out of tries
    saves: int = 0  # refused saves of the outcome
    targets: list[_Target] = field(default_factory=list)


class WebhookNotifier:
    """Delivers pending webhooks on `threads` threads of its own; see the module's docstring."""

    def __init__(
        self,
        store: StatusStore,
        client: WebhookClient,
        owner: str,
        *,
        deployment_url: str = "",
        backoff: float = 120.0,
        tries: int = TRIES,
        threads: int = THREADS,
        max_pending: int = MAX_PENDING,
        save_first: float = SAVE_FIRST,
        clock: Callable[[], float] = time.monotonic,
        events: EventBus | None = None,
    ) -> None:
        self.store = store
        self.events = events or EventBus()  # none given: the tries are announced to nobody
        self.client = client
        self.owner = owner
        self.deployment_url = deployment_url
        self.backoff = backoff
        self.tries = tries
        self.max_pending = max_pending
        self.save_first = save_first
        # A try of a target, or (None) the save of the outcome, each when it is due.
        self._due: DueQueue[tuple[_Delivery, _Target | None]] = DueQueue(clock)
        self._lock = threading.Lock()  # the held deliveries and their counts
        self._held: dict[str, _Delivery] = {}
        self._threads = [
            threading.Thread(target=self._run, name=f"webhook-{n}", daemon=True)
            for n in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def held(self) -> int:
        """Requests whose webhook this process holds (its outcome not yet recorded)."""
        with self._lock:
            return len(self._held)

    # -- taking webhooks in ----------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """Queue the webhook of a request that ended with one pending; never waits."""
        if isinstance(event, Finished) and event.record.webhook is WebhookState.PENDING:
            self.enqueue(event.record)

    def enqueue(self, record: StatusRecord) -> bool:
        """Hold the record's webhook and queue its first tries; whether it was taken."""
        targets = [_Target("callback_url", record.callback_url)] if record.callback_url else []
        if self.deployment_url:
            targets.append(_Target("WEBHOOK_URL", self.deployment_url))
        sendable = bool(targets) and self.client.configured
        delivery = _Delivery(record, webhook_body(record), len(targets), targets=targets)
        with self._lock:
            if self._due.closed or record.request_id in self._held:
                return False
            full = len(self._held) >= self.max_pending
            if not full:
                self._held[record.request_id] = delivery
                if not sendable:  # nothing can be sent: the outcome is known now
                    delivery.open, delivery.failed = 0, bool(targets)
        if full:
            self._overflow(record)
            return False
        if not sendable:
            why = (
                "WEBHOOK_SECRET is not set"
                if targets
                else "its only target was WEBHOOK_URL, which this process does not have; its "
                "webhook becomes null"
            )
            logger.warning("webhook not sent request_id=%s: %s", record.request_id, why)
            self._due.put(0.0, (delivery, None))
        for target in targets if sendable else ():
            self._due.put(0.0, (delivery, target))
        return True

    def _overflow(self, record: StatusRecord) -> None:
        if self.store.durable:
            logger.warning(
                "webhook queue full (%d held): request_id=%s stays pending in the store and is "
                "taken up when there is room",
                self.max_pending,
                record.request_id,
            )
            return
        logger.warning(
            "webhook queue full (%d held): webhook of request_id=%s given up",
            self.max_pending,
            record.request_id,
        )
        try:
            self.store.save(replace(record, webhook=WebhookState.FAILED))
        except StoreError as exc:
            logger.warning("webhook outcome not recorded request_id=%s: %s", record.request_id, exc)

    def recover(self, deadline: float = math.inf) -> int:
        """Claim pending webhooks that stopped processes left (and this one's own that it no
        longer holds) while there is room, at most RECOVER_MAX and until `deadline` (a
        time.monotonic() value), and queue them; how many were taken up."""
        if not self.store.durable or not self.client.configured:
            return 0
        with self._lock:
            if self._due.closed:
                return 0
            held, room = set(self._held), min(RECOVER_MAX, self.max_pending - len(self._held))
        if room <= 0:
            return 0
        taken = 0
        # This process's own come back too, and are skipped; the store goes on where this
        # round stopped next time, so that they never hide the others.
        for request_id in self.store.webhook_orphans(RECOVER_MAX, self.owner):
            if taken >= room or time.monotonic() >= deadline:
                break
            if request_id in held:
                continue
            record = self.store.claim_webhook(request_id, self.owner)
            if record is not None and self.enqueue(record):
                taken += 1
        if taken:
            logger.info("took up %d pending webhook(s) left by stopped processes", taken)
        return taken

    # -- the delivery threads ----------------------------------------------------------------

    def _run(self) -> None:
        while (work := self._due.take()) is not None:
            delivery, target = work
            try:
                if target is None:
                    self._save(delivery)
                else:
                    self._try(delivery, target)
            except Exception:  # the thread's one catch-all: a bug must not stop the webhooks
                logger.exception(
                    "webhook delivery failed request_id=%s", delivery.record.request_id
                )
                self._after_bug(delivery, target)
            finally:
                self._due.done()

    def _after_bug(self, delivery: _Delivery, target: _Target | None) -> None:
        """A try that raised counts as a target's last, so that the request is not held for
        ever; a save that raised lets the request go (its status still says pending)."""
        if target is not None and not target.done:
            self._tried(delivery, target, "failed")
            self._target_done(delivery, target, ok=False)
            return
        with self._lock:
            self._held.pop(delivery.record.request_id, None)

    def _try(self, delivery: _Delivery, target: _Target) -> None:
        target.tries += 1
        request_id = delivery.record.request_id
        try:
            self.client.post(target.url, delivery.body)
        except WebhookError as exc:
            shown = shown_target(target.url)
            if target.tries < self.tries:
                delay = self.backoff * 2 ** (target.tries - 1)
                logger.warning(
                    "webhook try %d/%d to %s %s failed request_id=%s: %s; next try in %gs",
                    target.tries, self.tries, target.name, shown, request_id, exc.reason, delay,
                )  # fmt: skip
                self._tried(delivery, target, "retrying")
                self._due.put(delay, (delivery, target))
                return
            logger.warning(
                "webhook to %s %s failed for good after %d tries request_id=%s: %s",
                target.name, shown, target.tries, request_id, exc.reason,
            )  # fmt: skip
            self._tried(delivery, target, "failed")
            self._target_done(delivery, target, ok=False)
            return
        self._tried(delivery, target, "delivered")
        self._target_done(delivery, target, ok=True)

    def _tried(self, delivery: _Delivery, target: _Target, outcome: str) -> None:
        self.events.emit(WebhookTried(delivery.record, target.name, outcome))

    def _target_done(self, delivery: _Delivery, target: _Target, ok: bool) -> None:
        with self._lock:
            target.done = True
            delivery.open -= 1
            delivery.failed |= not ok
            last = delivery.open == 0
        if last:
            self._save(delivery)

    def _save(self, delivery: _Delivery) -> None:
        """Record the outcome, under the owner check; a refused save is tried again later.
        None when there was no target: no webhook was owed after all."""
        state = (
            WebhookState.FAILED
            if delivery.failed
            else WebhookState.DELIVERED
            if delivery.targets
            else None
        )
        record = replace(delivery.record, webhook=state)
        try:
            saved = self.store.save(record)
        except StoreError as exc:
            delivery.saves += 1
            if delivery.saves < SAVE_TRIES:
                if delivery.saves == 1:
                    logger.warning(
                        "the status store refused the webhook outcome (%s) request_id=%s: %s; "
                        "trying again",
                        state, record.request_id, exc,
                    )  # fmt: skip
                delay = min(SAVE_MAX, self.save_first * 2 ** (delivery.saves - 1))
                self._due.put(delay, (delivery, None))
                return
            logger.error(
                "the webhook outcome (%s) of request_id=%s could not be recorded (%s): its status "
                "still says pending, and it may be delivered again",
                state, record.request_id, exc,
            )  # fmt: skip
            saved = True
        if not saved:
            logger.warning(
                "request_id=%s was taken over by another process before its webhook outcome (%s) "
                "was recorded",
                record.request_id, state,
            )  # fmt: skip
        with self._lock:
            self._held.pop(record.request_id, None)

    # -- stopping --------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait (at most `timeout`, default one try's time-out up to FLUSH_MAX) for the tries due
        now to be made; whether they were. Retries waiting for their backoff are not waited for."""
        return self._due.idle(min(self.client.timeout, FLUSH_MAX) if timeout is None else timeout)

    def close(self, timeout: float = CLOSE_WAIT) -> int:
        """Stop delivering; how many webhooks were left (pending in a durable store for the
        next process, given up on the memory store). Tries under way get `timeout` s to end."""
        with self._lock:  # enqueue() checks `closed` under this lock: none slips in after
            if self._due.closed:
                return 0
            self._due.close()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            left = list(self._held.values())
        for delivery in left:
            if delivery.open == 0:  # its outcome is known: one last chance to record it
                delivery.saves = SAVE_TRIES
                self._save(delivery)
        with self._lock:
            left = list(self._held.values())
        self.client.close()
        if not left:
            return 0
        if self.store.durable:
            logger.info("%d webhook(s) left pending for the next process", len(left))
        else:
            for delivery in left:
                logger.info(
                    "webhook given up at shutdown request_id=%s", delivery.record.request_id
                )
            logger.warning(
                "%d webhook(s) given up at shutdown: the memory store keeps nothing", len(left)
            )
        return len(left)
