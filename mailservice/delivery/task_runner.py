"""What a Celery worker does with one task: take the request over, run one attempt, follow it.

`TaskRunner.run(request_id, from_owner)` is the task's body without Celery (the task in
mailservice/celery_worker.py only maps its StoreError to "put the task back"). It first takes
the request over in the store from the owner that handed it out (`StatusStore.take`): this is
the owner check that makes a task delivered twice harmless (the broker redelivers a task whose
worker died, and a recovery may hand over a request whose first task is still queued); a task
whose request another process took, or that is final, does nothing. Then it runs the same
`DeliveryAttempt` as the thread pool, with the same statuses, log lines and events, and follows
its answer: a final status is saved (kept by `StoreRetry` while the store refuses it), a retry
is saved as `retrying` and handed over again after its backoff, from this process, which owns
it now (`CeleryDispatcher.later`); the backoff waits in this process and in the store, never as
a long countdown on the broker.
"""

from __future__ import annotations

import logging
from enum import StrEnum

from mailservice.delivery.attempt import (
    AttemptState,
    DeliveryAttempt,
    Final,
    Hold,
    Next,
    Retry,
    WaitForStore,
    log_retry,
    log_unrecorded,
)
from mailservice.delivery.celery_dispatcher import CeleryDispatcher
from mailservice.delivery.store_retry import StoreRetry
from mailservice.errors import StoreError
from mailservice.senders import SenderDirectory
from mailservice.stores.contract import StatusRecord

logger = logging.getLogger(__name__)


class TaskResult(StrEnum):
    """What one task came to (the task's return value, shown by Flower)."""

    SKIPPED = "skipped"  # taken by another process already, or final: nothing done
    SENT = "sent"
    FAILED = "failed"
    EXPIRED = "expired"  # its expires_at came before it could be sent
    RETRY = "retry"  # handed over again, for a later attempt
    HELD = "held"  # handed over again once its sender's account may send (pace, pause)
    DROPPED = "dropped"  # another process took it over during the attempt


class TaskRunner:
    """Runs tasks in one worker process, with its dispatcher's store, attempt and owner."""

    def __init__(self, dispatcher: CeleryDispatcher, senders: SenderDirectory) -> None:
        self.dispatcher = dispatcher
        self.attempt: DeliveryAttempt = dispatcher.attempt
        self.store = dispatcher.store
        self.senders = senders
        self._unsaved: StoreRetry[StatusRecord] = StoreRetry(self.attempt.save_final)

    def run(self, request_id: str, from_owner: str, possibly_delivered: bool = False) -> TaskResult:
        """One task; StoreError when the store could not be asked (nothing was done).
        `possibly_delivered`: what the hand-over says of the earlier attempts."""
        taken = self.store.take(request_id, from_owner, self.dispatcher.owner)
        if taken is None:
            logger.debug("request_id=%s is no longer %s's: nothing to do", request_id, from_owner)
            return TaskResult.SKIPPED
        record, payload = taken
        state = AttemptState(record, payload, possibly_delivered=possibly_delivered)
        sender = self.senders.by_email(record.sender)
        if sender is None:
            return self._end(self.attempt.failed(state, "its sender is no longer configured"))
        with self.dispatcher.sending():
            try:
                step = self.attempt.run(state, sender).next
            except Exception as exc:  # the one catch-all: a bug must not leave it unfinished
                logger.exception("unexpected error request_id=%s", request_id)
                step = self.attempt.failed(state, f"internal error: {type(exc).__name__}")
        return self._follow(state, step)

    def _follow(self, state: AttemptState, step: Next) -> TaskResult:
        if isinstance(step, Final):
            return self._end(step)
        if isinstance(step, Retry):
            if self.attempt.save_retry(step.record) is False:
                logger.warning("request_id=%s was taken over by another process", state.request_id)
                return TaskResult.DROPPED
            log_retry(step)
            self.dispatcher.later(state.request_id, step.delay, state.possibly_delivered)
            return TaskResult.RETRY
        if isinstance(step, WaitForStore):  # `sending` not recorded: it is still ours, unsent
            self.dispatcher.later(state.request_id, step.delay, state.possibly_delivered)
            return TaskResult.RETRY
        if isinstance(step, Hold):  # its sender's account may not send now: ours, unsent
            self.dispatcher.later(state.request_id, step.delay, state.possibly_delivered)
            return TaskResult.HELD
        if step.ended is not None:  # canceled or expired meanwhile: nothing was sent
            logger.info("request_id=%s: %s", state.request_id, step.reason)
        else:
            logger.warning("request_id=%s: %s", state.request_id, step.reason)
        return TaskResult.DROPPED

    def _end(self, final: Final) -> TaskResult:
        try:
            self.attempt.save_final(final.record)
        except StoreError:
            self._unsaved.put(final.record)  # never dropped before the store has it
        return TaskResult(final.record.status.value)

    def close(self, seconds: float) -> None:
        """Wait up to `seconds` for the final statuses the store refused, then give up on them
        (logged: recovery may send them again, with the same Message-ID)."""
        self._unsaved.wait_empty(seconds)
        for record in self._unsaved.stop():
            log_unrecorded(record)
