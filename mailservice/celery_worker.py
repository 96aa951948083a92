"""The Celery worker: `celery -A mailservice.celery_worker worker` delivers what API processes
accepted, on any host that reaches the broker and the store.

It reads the same settings as the API (the environment and `.env`; DISPATCHER=celery is
implied), and each prefork child process builds the same delivery stack as an API process
(`delivery/stack.py`): its own store connection, SMTP connections reused from task to task,
request log, webhooks, metrics and a lease of its own, whose recovery takes up what stopped
processes left. The task `mail.deliver` is `TaskRunner.run` (delivery/task_runner.py). Celery's
warm shutdown (SIGTERM) lets each child finish its attempt, leaves the rest on the broker, and
then each child drains its stack as an API process does.

With WORKER_METRICS_PORT the worker's main process serves its children's metrics on HOST at
that port (prometheus-client's multiprocess mode, as under gunicorn).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from celery import signals
from celery.exceptions import Reject

from mailservice.celery_app import TASK, make_celery, publisher
from mailservice.config import Settings, load_settings
from mailservice.errors import ConfigError, StoreError
from mailservice.logging_setup import configure_logging
from mailservice.metrics_dir import prepare_metrics_dir

logger = logging.getLogger(__name__)

# A task whose store cannot be asked goes back to the broker after this pause, so that an
# outage of the store costs each child one try per pause, not a busy loop of redeliveries.
STORE_PAUSE = 1.0


def _settings() -> Settings:
    try:
        return load_settings(dispatcher="celery")
    except ConfigError as exc:  # one line, as mail_server.py and gunicorn's master print it
        print(f"mail worker: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


settings = _settings()
if settings.worker_metrics_port:  # before prometheus_client is first imported (its mode)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = prepare_metrics_dir(
        settings.prometheus_multiproc_dir
    ).path
app = make_celery(settings)


class _Child:
    """This process's stack and task runner, built once (prefork: in each child)."""

    runner: Any = None
    stack: Any = None


def start_child() -> Any:
    """Build and start this process's delivery stack; its TaskRunner."""
    from mailservice.delivery.celery_dispatcher import CeleryDispatcher
    from mailservice.delivery.stack import build_stack
    from mailservice.delivery.task_runner import TaskRunner
    from mailservice.senders import load_senders

    senders = load_senders(settings)
    stack = build_stack(
        settings,
        senders,
        lambda attempt: CeleryDispatcher(
            attempt, publisher(app), queue_max=settings.queue_max, threads=1
        ),
    )
    _Child.stack, _Child.runner = stack, TaskRunner(stack.dispatcher, senders)
    stack.start()
    logger.info("worker process ready (owner %s)", stack.dispatcher.owner)
    return _Child.runner


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    """The service's own log format (LOG_LEVEL, LOG_FORMAT), not Celery's."""
    configure_logging(settings)


@signals.worker_process_init.connect
def _child_started(**_: Any) -> None:
    start_child()


@signals.worker_process_shutdown.connect
def _child_stopping(**_: Any) -> None:
    if _Child.stack is None:
        return
    _Child.runner.close(settings.drain_seconds)
    left = _Child.stack.shutdown(settings.drain_seconds)
    _Child.stack.store.close()
    if settings.worker_metrics_port:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())
    logger.info("worker process stopped; %d request(s) left for recovery", left)


@signals.worker_init.connect
def _serve_metrics(**_: Any) -> None:
    """The main process: the children's metrics at HOST:WORKER_METRICS_PORT/metrics."""
    if not settings.worker_metrics_port:
        return
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    start_http_server(settings.worker_metrics_port, settings.host, registry)
    logger.info("metrics on http://%s:%d/metrics", settings.host, settings.worker_metrics_port)


@app.task(name=TASK)
def deliver(request_id: str, from_owner: str) -> str:
    """Deliver one request handed over by `from_owner` (delivery/task_runner.py)."""
    runner = _Child.runner or start_child()  # a pool other than prefork: built on first use
    try:
        return str(runner.run(request_id, from_owner))
    except StoreError as exc:  # nothing was done: back on the broker, after a pause
        time.sleep(STORE_PAUSE)
        raise Reject(str(exc), requeue=True) from exc
