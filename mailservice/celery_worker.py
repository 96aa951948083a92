"""The Celery worker: `celery -A mailservice.celery_worker worker` delivers what API processes
accepted, on any host that reaches the broker and the store.

It reads the same settings as the API (the environment and `.env`; DISPATCHER=celery is
implied) and checks them, the senders file and what the settings name, at import, so that a
bad value stops the worker with one line and exit code 2, as `python mail_server.py` does,
before any child starts. Each prefork child process then builds the same delivery stack as an
API process (`delivery/stack.py`): its own store connection, SMTP connections reused from task
to task, request log, webhooks, metrics and a lease of its own, whose recovery takes up what
stopped processes left. A child that cannot build its stack exits, and Celery starts another.
The task `mail.deliver` is `TaskRunner.run` (delivery/task_runner.py). Celery's warm shutdown
(SIGTERM) lets each child finish its attempt, leaves the rest on the broker, and then each
child drains its stack as an API process does.

With WORKER_METRICS_PORT the worker's main process serves its children's metrics
(worker_metrics.py).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

from celery import signals
from celery.exceptions import Reject

from mailservice.celery_app import TASK, make_celery, publisher
from mailservice.config import Settings, load_settings
from mailservice.delivery.celery_dispatcher import CeleryDispatcher
from mailservice.delivery.stack import DeliveryStack, build_stack
from mailservice.delivery.task_runner import TaskRunner
from mailservice.errors import ConfigError, StoreError
from mailservice.logging_setup import configure_logging
from mailservice.preflight import check_named_resources
from mailservice.senders import SenderDirectory, load_senders
from mailservice.worker_metrics import WorkerMetrics

logger = logging.getLogger(__name__)

# A task whose store cannot be asked waits in its child for the store, trying again after
# STORE_WAIT_FIRST seconds, doubling up to STORE_WAIT_MAX, for up to STORE_WAIT_BUDGET in all,
# then goes back to the broker: an outage costs each child a try every few seconds and, once
# a minute, one "rejected" line in Celery's log, not one a second (the store's own log says
# once that it is down). A task that cannot run for another reason goes back after a pause.
STORE_WAIT_FIRST = 0.25
STORE_WAIT_MAX = 5.0
STORE_WAIT_BUDGET = 60.0
REQUEUE_PAUSE = 1.0


def _configured() -> tuple[Settings, SenderDirectory]:
    try:
        settings = load_settings(dispatcher="celery")
        check_named_resources(settings)  # the store URL's form, EMAIL_LOG's folder
        return settings, load_senders(settings)
    except ConfigError as exc:  # one line, as mail_server.py and gunicorn's master print it
        print(f"mail worker: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


settings, senders = _configured()
app = make_celery(settings)


class _Process:
    """This process's parts: a child's stack and runner, the main process's metrics server."""

    stack: DeliveryStack | None = None
    runner: TaskRunner | None = None
    metrics: WorkerMetrics | None = None
    lock = threading.Lock()  # a threads pool's first tasks arrive at once
    threads = 1  # attempts at once in the process that sends: a threads pool's concurrency
    forks = True  # prefork: each child builds its stack; else the main process builds one


def start_child() -> TaskRunner:
    """Build and start this process's delivery stack once; its TaskRunner. A prefork child
    builds it as it starts; a threads (or solo) pool in the main process once the worker is
    ready (or at its first task, should one come first), so that its due scheduler and lease
    keeper run before any task does."""
    with _Process.lock:
        if _Process.runner is not None:
            return _Process.runner
        return _build_stack()


def _build_stack() -> TaskRunner:
    stack = build_stack(
        settings,
        senders,
        lambda attempt: CeleryDispatcher(
            attempt, publisher(app), queue_max=settings.queue_max, threads=_Process.threads
        ),
    )
    dispatcher = stack.dispatcher
    assert isinstance(dispatcher, CeleryDispatcher)
    _Process.stack, _Process.runner = stack, TaskRunner(dispatcher, senders)
    stack.start()
    logger.info("worker process ready (owner %s)", dispatcher.owner)
    return _Process.runner


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    """The service's own log format (LOG_LEVEL, LOG_FORMAT), not Celery's."""
    configure_logging(settings)


@signals.worker_init.connect
def _worker_started(sender: Any = None, **_: Any) -> None:
    """The main process, before the children are forked."""
    if sender is not None:
        pool = str(sender.pool_cls).lower()
        _Process.forks = "prefork" in pool
        if "thread" in pool:
            _Process.threads = int(sender.concurrency)
    if settings.worker_metrics_port:
        _Process.metrics = WorkerMetrics.start(settings)
    if settings.celery_broker_url.startswith("amqp") and app.conf.task_time_limit >= 1800:
        logger.warning(
            "CELERY_TASK_TIME_LIMIT is %.0f s: RabbitMQ closes a channel whose task is not "
            "acknowledged within its consumer_timeout (default 1800 s); raise it above the "
            "time limit, or lower the limit",
            app.conf.task_time_limit,
        )


@signals.worker_ready.connect
def _worker_ready(**_: Any) -> None:
    """A threads or solo pool sends from the main process: its stack starts now, not at the
    first task, so that scheduled requests fall due and orphans are recovered without one."""
    if not _Process.forks:
        try:
            start_child()
        except Exception:  # as a prefork child does: nothing could be sent from here
            logger.exception("worker could not start its delivery stack; it exits")
            os._exit(3)


@signals.worker_shutdown.connect
def _worker_stopped(**_: Any) -> None:
    # A threads pool's stack lives in the main process: Celery has let its tasks finish.
    _child_stopping()
    if _Process.metrics is not None:
        _Process.metrics.stop()


@signals.worker_process_init.connect
def _child_started(**_: Any) -> None:
    try:
        start_child()
    except Exception:  # Celery would log it and keep the child, which could then run no task
        logger.exception("worker process could not start; it exits and Celery starts another")
        os._exit(3)


@signals.worker_process_shutdown.connect
def _child_stopping(**_: Any) -> None:
    stack, runner = _Process.stack, _Process.runner
    if stack is None or runner is None:
        return
    _Process.stack = _Process.runner = None  # stopped once, whichever signal comes first
    runner.close(settings.drain_seconds)
    left = stack.shutdown(settings.drain_seconds)
    stack.store.close()
    if settings.worker_metrics_port:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())
    logger.info("worker process stopped; %d request(s) left for recovery", left)


# The hard time limit puts the task back (acks_on_timeout=False) instead of acking it: a child
# killed before its `take` would otherwise strand its request under a live lease; one killed
# after it finds, once redelivered, the request taken, and recovery sends it.
@app.task(name=TASK, acks_on_timeout=False)
def deliver(request_id: str, from_owner: str, possibly_delivered: bool = False) -> str:
    """Deliver one request handed over by `from_owner` (delivery/task_runner.py)."""
    try:
        runner = _Process.runner or start_child()  # a threads or solo pool: built here
        budget = min(STORE_WAIT_BUDGET, app.conf.task_time_limit / 2)
        deadline, delay = time.monotonic() + budget, STORE_WAIT_FIRST
        while True:
            try:
                return str(runner.run(request_id, from_owner, possibly_delivered))
            except StoreError as exc:  # nothing was done: wait for the store, or put it back
                if time.monotonic() + delay > deadline:
                    raise Reject(str(exc), requeue=True) from None
                time.sleep(delay)
                delay = min(delay * 2, STORE_WAIT_MAX)
    except Reject:
        raise
    except Exception as exc:  # a bug before the request was taken: never acked and forgotten
        logger.exception("task for request_id=%s could not run; put back", request_id)
        time.sleep(REQUEUE_PAUSE)
        raise Reject(f"{type(exc).__name__}: {exc}", requeue=True) from None
