"""The Celery app of a `DISPATCHER=celery` deployment: its settings, and how a task is published.

API processes use it only to publish (`publisher()`: the task by name, so they never import the
worker's code); worker processes (`celery -A mailservice.celery_worker worker`) run the task.
The delivery guarantee is the thread pool's: exactly once when a worker dies before DATA, at
most twice, with the same Message-ID, when it dies after handing the message over. It rests on
the store (the owner check of `StatusStore.take`, the leases and their recovery) and on the
settings the Celery community recommends for tasks that must not be lost, each said where it is
set in `celery_config()`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery

from mailservice.config import Settings, celery_time_limit
from mailservice.delivery.handoff import Handover

TASK = "mail.deliver"
QUEUE = "mail"
# Seconds a broker call may take before it counts as failed (connect, send, a publish's confirm).
BROKER_TIMEOUT = 5.0


def transport_options(settings: Settings) -> dict[str, Any]:
    """The broker transport's options, by the broker's kind."""
    if settings.celery_broker_url.startswith(("amqp", "pyamqp")):
        return {
            # A publish returns only once RabbitMQ has the message: without it, one written to
            # a connection that then dies is counted as handed over and lost.
            "confirm_publish": True,
            "connect_timeout": BROKER_TIMEOUT,
            "read_timeout": BROKER_TIMEOUT,
            "write_timeout": BROKER_TIMEOUT,
        }
    visibility = settings.celery_visibility_timeout
    return {
        # Redis redelivers a task not acked within the visibility timeout; it must outlast the
        # longest attempt (the hard limit below), or a slow send is handed to a second worker.
        "visibility_timeout": visibility,
        # The sweep that puts such tasks back runs every tenth of it, and at least every 10 s
        # (kombu's interval x throttle).
        "unacked_restore_interval": max(1.0, min(10.0, visibility / 10)),
        "unacked_restore_throttle": 1,
        # Without them a broker that accepts connections and never answers blocks a publish
        # (and the hand-over thread) for ever: kombu's Redis transport ignores
        # broker_connection_timeout.
        "socket_timeout": BROKER_TIMEOUT,
        "socket_connect_timeout": BROKER_TIMEOUT,
    }


def _redis_transport(settings: Settings) -> dict[str, Any]:
    """On a Redis broker, kombu's transport with one client per channel, not one per command
    (mailservice/celery_transport.py)."""
    if settings.celery_broker_url.startswith(("redis://", "rediss://")):
        return {"broker_transport": "mailservice.celery_transport:Transport"}
    return {}


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings, from the service's."""
    limit = celery_time_limit(settings)
    return {
        "broker_url": settings.celery_broker_url,
        **_redis_transport(settings),
        # Ack a task after it ran, not when it was received: a worker that dies mid-task leaves
        # it on the broker for another. The owner check makes the second run do nothing when
        # the first got as far as taking the request over.
        "task_acks_late": True,
        # A worker child that dies (SIGKILL, a crash) puts its task back instead of acking it
        # as failed: a task lost before its `take` would leave its request queued
        # under a live API process's lease, with no task to deliver it.
        "task_reject_on_worker_lost": True,
        # Each worker child reserves the one task it runs: a dead worker strands no others,
        # and a busy one holds none another worker could send.
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": transport_options(settings),
        # The hard limit kills a child whose attempt hangs past any SMTP time-out, below the
        # visibility timeout (config.py refuses otherwise); the task is put back, not acked
        # (`acks_on_timeout=False` on the task, celery_worker.py). RabbitMQ's consumer_timeout
        # (default 1800 s) must be above it: the worker warns when it is not sure.
        "task_time_limit": limit,
        # A broker connection that drops mid-task must not cancel an attempt in DATA: it
        # finishes, its ack is lost, and the redelivered task finds the request taken.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "broker_connection_retry_on_startup": True,
        # Statuses live in the store: no result backend, and JSON only (never pickle).
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": QUEUE,
        # The hand-over thread retries on its own (delivery/handoff.py): a publish that fails
        # must fail within BROKER_TIMEOUT, not block in kombu's retry loop.
        "task_publish_retry": False,
        "broker_connection_timeout": BROKER_TIMEOUT,
        # No task events unless a monitor asks: each task's received and succeeded events are
        # messages on the broker, published by the worker's main process, which is the one
        # process every task of a worker goes through. On the bench they were 40% of its CPU
        # and 2.6 of the 6.6 broker round trips of a task, and halved the rate of an empty
        # task. Flower asks while it runs (its enable_events option, on by default, every few
        # seconds: "Events of group {task} enabled by remote" in the worker's log), so its
        # task list fills as before; `celery -A mailservice.celery_worker control
        # enable_events` asks for another monitor. No guarantee above rests on events.
        "worker_send_task_events": False,
        "task_send_sent_event": False,
    }


def make_celery(settings: Settings) -> Celery:
    """The app, configured; no task registered (the worker module registers its own)."""
    app = Celery("mail_service", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def publisher(app: Celery) -> Callable[[Handover], None]:
    """The hand-over's `publish`: one task message for one request, by the task's name."""

    def publish(handover: Handover) -> None:
        args = (handover.request_id, handover.from_owner, handover.possibly_delivered)
        app.send_task(TASK, args=args, retry=False)

    return publish
