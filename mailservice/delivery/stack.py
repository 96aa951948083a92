"""The delivery side of one process, wired: store, request log, events, SMTP client, attempt,
dispatcher, webhooks, leases, acceptor, failure notices, the due scheduler and the long
poll's status watch.

Every process that accepts or sends builds the same stack with `build_stack()`: an API process
(`mail_server.create_app()`, which adds the HTTP side) and a Celery worker process
(`mailservice.celery_worker`, which adds the task). They differ only in their dispatcher,
which the caller makes from the stack's `DeliveryAttempt` (`make_dispatcher`): the thread
pool, or the Celery dispatcher that hands requests to the broker. The subscribers' order is the
log's: the request log first, so that a failure's line comes before its notice's; the status
watch last, so that a long poll answered `sent` finds its line, counts and webhook there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from mailservice.config import Settings
from mailservice.delivery.accepting import Acceptor
from mailservice.delivery.account_gate import AccountGate
from mailservice.delivery.attempt import DeliveryAttempt
from mailservice.delivery.dispatcher import Dispatcher
from mailservice.delivery.failure_notices import FailureNotifier
from mailservice.delivery.gate_backends import GateBackend, MemoryGateBackend, RedisGateBackend
from mailservice.delivery.notice_policy import reason_class
from mailservice.delivery.recovery import LeaseKeeper
from mailservice.delivery.relays import Relays
from mailservice.delivery.scheduler import DueScheduler
from mailservice.delivery.smtp_client import SmtpClient
from mailservice.delivery.suppression import SuppressionFilter
from mailservice.errors import ConfigError
from mailservice.events.bus import EventBus
from mailservice.events.metrics import DeliveryMetrics, relay_failovers, state_gauges
from mailservice.events.metrics_registry import MetricsRegistry
from mailservice.events.request_log import RequestLog
from mailservice.events.status_watch import StatusWatch
from mailservice.events.webhook_client import WebhookClient
from mailservice.events.webhooks import WebhookNotifier
from mailservice.senders import SenderDirectory
from mailservice.stores import redis_client_of, store_from_url
from mailservice.stores.contract import StatusStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeliveryStack:
    """One process's delivery parts; `start()` begins the lease upkeep and the due scheduler,
    `shutdown()` ends all."""

    store: StatusStore
    request_log: RequestLog
    metrics: MetricsRegistry
    events: EventBus
    smtp: SmtpClient
    attempt: DeliveryAttempt
    dispatcher: Dispatcher
    webhooks: WebhookNotifier
    leases: LeaseKeeper
    acceptor: Acceptor
    notices: FailureNotifier | None
    scheduler: DueScheduler
    watch: StatusWatch
    gate: AccountGate

    def start(self) -> None:
        """Take up what stopped processes left on a durable store, and keep the lease; take
        scheduled requests as they fall due (those already due first)."""
        self.leases.start()
        self.scheduler.start()

    def shutdown(self, drain_seconds: float) -> int:
        """Stop accepting, send for up to `drain_seconds`, give up the lease; requests left.
        Scheduled requests not yet taken stay in the store (the memory store's are lost)."""
        self.watch.close()  # long polls answer their current status now, not after the drain
        self.scheduler.stop()  # nothing more is handed to the draining dispatcher
        left = self.dispatcher.drain(drain_seconds)
        self.webhooks.close()  # before the lease goes: what it leaves is for the next process
        self.leases.stop()
        self.request_log.close()
        return left


def gate_backend(store: StatusStore) -> GateBackend:
    """The sender gate's state: in the store's Redis, shared by every process, when the store
    is Redis; else this process's own (delivery/account_gate.py)."""
    client = redis_client_of(store)
    return MemoryGateBackend() if client is None else RedisGateBackend(client)  # type: ignore[arg-type]


def build_stack(
    settings: Settings,
    senders: SenderDirectory,
    make_dispatcher: Callable[[DeliveryAttempt], Dispatcher],
) -> DeliveryStack:
    """Open the store and the request log, and wire the rest; nothing is started."""
    store = store_from_url(
        settings.status_store_url,
        settings.status_ttl,
        failed_content_ttl=settings.failed_content_ttl,
    )
    try:
        request_log = RequestLog(
            settings.email_log, settings.email_log_max_bytes, settings.email_log_backups
        )
    except OSError as exc:  # e.g. its folder is missing: a setting to fix, not a traceback
        raise ConfigError(f"EMAIL_LOG={settings.email_log!r} cannot be opened: {exc}") from exc
    metrics = MetricsRegistry()  # one process, or several (PROMETHEUS_MULTIPROC_DIR)
    events = EventBus()
    events.subscribe(request_log.on_event, flush=request_log.flush)  # the first subscriber
    events.subscribe(DeliveryMetrics(metrics, reason_class).on_event)  # counts, in line
    smtp = SmtpClient.for_settings(settings)
    gate = AccountGate(
        gate_backend(store),
        pause_seconds=settings.sender_pause_seconds,
        failures=settings.sender_breaker_failures,
        # Longer than any probe's attempt may take (connect, handshake, DATA's last reply).
        probe_timeout=max(600.0, settings.smtp_data_timeout + 5 * settings.smtp_timeout),
    )
    attempt = DeliveryAttempt(
        store,
        smtp,
        events,
        max_attempts=settings.max_attempts,
        retry_backoff=settings.retry_backoff,
        gate=gate,
        relays=Relays(settings.relay_failback_seconds, on_failover=relay_failovers(metrics).inc),
        suppression=SuppressionFilter(store, settings.suppression_days),  # every dispatcher's
    )
    dispatcher = make_dispatcher(attempt)
    webhooks = WebhookNotifier(
        store,
        WebhookClient(
            settings.webhook_secret, settings.webhook_timeout, settings.webhook_allow_private
        ),
        dispatcher.owner,
        deployment_url=settings.webhook_url,
        backoff=settings.webhook_backoff,
        events=events,  # its tries, for the metrics
    )
    events.subscribe(webhooks.on_event, flush=webhooks.flush)  # queues; its threads deliver
    events.subscribe(dispatcher.on_event)  # a cancel here lets its waiting job go at once
    leases = LeaseKeeper(
        store, dispatcher, senders, settings.lease_seconds, recoveries=(webhooks.recover,)
    )
    accounts = senders.accounts()
    paused = lambda: dict.fromkeys(gate.pauses(accounts), 1.0)  # noqa: E731
    metrics.watch(state_gauges(dispatcher.stats, smtp.open_connections, paused))  # at scrape
    acceptor = Acceptor(store, dispatcher, events, deployment_webhook=bool(settings.webhook_url))
    notices = None
    if settings.admin_email:  # after the request log: a failure's line comes before its notice's
        notices = FailureNotifier(settings.admin_email, senders, acceptor)
        events.subscribe(notices.on_event)
    watch = StatusWatch(store)  # the last subscriber: see the docstring
    events.subscribe(watch.on_event)
    for warning in store.durability_warnings():
        logger.warning("status store: %s", warning)
    scheduler = DueScheduler(store, dispatcher, senders, events)
    return DeliveryStack(
        store, request_log, metrics, events, smtp, attempt, dispatcher, webhooks, leases,
        acceptor, notices, scheduler, watch, gate,
    )  # fmt: skip
