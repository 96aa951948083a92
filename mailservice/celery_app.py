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


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings, from the service's."""
    limit = celery_time_limit(settings)
    visibility = settings.celery_visibility_timeout
    return {
        "broker_url": settings.celery_broker_url,
        # Ack a task after it ran, not when it was received: a worker that dies mid-task leaves
        # it on the broker for another. The owner check makes the second run do nothing when
        # the first got as far as taking the request over.
        "task_acks_late": True,
        # A worker child killed (SIGKILL, the hard time limit) puts its task back instead of
        # acking it as failed: a task lost before its `take` would leave its request queued
        # under a live API process's lease, with no task to deliver it.
        "task_reject_on_worker_lost": True,
        # Each worker child reserves the one task it runs: a dead worker strands no others,
        # and a busy one holds none another worker could send.
        "worker_prefetch_multiplier": 1,
        # Redis redelivers a task not acked within the visibility timeout; it must outlast the
        # longest attempt (the hard limit below), or a slow send is handed to a second worker.
        # The sweep that puts such tasks back runs every tenth of it (kombu: interval x throttle).
        "broker_transport_options": {
            "visibility_timeout": visibility,
            "unacked_restore_interval": max(1.0, min(10.0, visibility / 10)),
            "unacked_restore_throttle": 1,
        },
        # The hard limit kills a child whose attempt hangs past any SMTP time-out, below the
        # visibility timeout (config.py refuses otherwise) and RabbitMQ's consumer_timeout.
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
        # The API's hand-over thread retries on its own (delivery/handoff.py): a publish that
        # fails must fail at once, not block in kombu's retry loop.
        "task_publish_retry": False,
        "broker_connection_timeout": 4.0,
        "worker_send_task_events": True,  # Flower's task list
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
        app.send_task(TASK, args=(handover.request_id, handover.from_owner), retry=False)

    return publish
