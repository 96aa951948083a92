"""The delivery metrics: an EventBus subscriber that counts what happens to requests, and the
state gauges read from the dispatcher and the SMTP client.

`DeliveryMetrics.on_event` turns each event into counts, and nothing else calls it: `Accepted`
(requests accepted, by the route they came in by), `Finished` (one counter per final status:
sent; failed, by kind and reason class; expired; canceled), `Attempted` (the SMTP
transaction's time by what the server made of it, and retries) and `WebhookTried` (webhook
tries by target and outcome). `state_gauges()` names the gauges that are state, each read
through a read-only method at scrape time, and `relay_failovers()` the one counter no event
feeds (a relay failover is no request's event). The metric names and labels are the contract
of docs/API.md, "Metrics"; every label takes a bounded set of values.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol

from prometheus_client import Counter

from mailservice.events.bus import Accepted, Attempted, Event, Finished, WebhookTried
from mailservice.events.metrics_registry import MetricsRegistry, StateGauge
from mailservice.stores.contract import EmailStatus

# Seconds. An SMTP transaction on a reused connection takes milliseconds; a new connection
# with TLS and a login, a slow relay, or the reply to the end of DATA (which may take
# SMTP_DATA_TIMEOUT, 600 s by default) take much longer.
SMTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# API.md section 4: a reason a client can rely on; the attempts were used up.
_AFTER_ATTEMPTS = re.compile(r" \(after \d+ attempts\)")


def failure_kind(reason: str, error: str | None) -> str:
    """How a failed request ended, from its reason class and `error`: `shutdown` (a drain
    ended it unsent), `internal` (a bug), `exhausted_retries` (transient failures until
    MAX_ATTEMPTS), else `permanent` (nothing a retry could change)."""
    if reason in ("shutdown", "internal"):
        return reason
    if error and _AFTER_ATTEMPTS.search(error):
        return "exhausted_retries"
    return "permanent"


class DeliveryMetrics:
    """Counts events into `registry`'s metrics; `classify` is the reason class of a failed
    request's `error` (delivery/notice_policy.reason_class, handed in: events sits below
    delivery)."""

    def __init__(self, registry: MetricsRegistry, classify: Callable[[str | None], str]) -> None:
        self._classify = classify
        self.accepted = registry.counter(
            "mail_requests_accepted",
            "Requests recorded as queued or scheduled (answered 202 or waited for), by the "
            "route they came in by; failure-notice for ADMIN_EMAIL notices.",
            ["route"],
        )
        self.sent = registry.counter(
            "mail_requests_sent", "Requests that ended sent (delivered to at least one recipient)."
        )
        self.failed = registry.counter(
            "mail_requests_failed",
            "Requests that ended failed, by kind (permanent, exhausted_retries, shutdown, "
            "internal) and reason class (the failure notices' classes).",
            ["kind", "reason"],
        )
        self.expired = registry.counter(
            "mail_requests_expired",
            "Requests that ended expired (their expires_at came before they were sent).",
        )
        self.canceled = registry.counter(
            "mail_requests_canceled", "Requests that ended canceled (DELETE /email-status)."
        )
        self.retried = registry.counter(
            "mail_retries", "Attempts that failed transiently and were given another attempt."
        )
        self.smtp_seconds = registry.histogram(
            "mail_smtp_send_seconds",
            "Seconds one attempt's SMTP transaction took (connecting included), by what the "
            "server made of it: sent, transient, permanent.",
            ["outcome"],
            SMTP_BUCKETS,
        )
        self.webhook_tries = registry.counter(
            "mail_webhook_tries",
            "Webhook tries, by target (callback_url, WEBHOOK_URL) and outcome: delivered (2xx), "
            "retrying (failed, tries left), failed (failed, the target's last try).",
            ["target", "outcome"],
        )

    def on_event(self, event: Event) -> None:
        """The EventBus subscriber; quick (a few locked additions), so it runs in line."""
        if isinstance(event, Accepted):
            self.accepted.labels(event.source or "other").inc()
        elif isinstance(event, Finished):
            record = event.record
            if record.status is EmailStatus.SENT:
                self.sent.inc()
            elif record.status is EmailStatus.FAILED:
                reason = self._classify(record.error)
                self.failed.labels(failure_kind(reason, record.error), reason).inc()
            elif record.status is EmailStatus.EXPIRED:
                self.expired.inc()
            elif record.status is EmailStatus.CANCELED:
                self.canceled.inc()
        elif isinstance(event, Attempted):
            self.smtp_seconds.labels(event.outcome).observe(event.seconds)
            if event.retry:
                self.retried.inc()
        elif isinstance(event, WebhookTried):
            self.webhook_tries.labels(event.target, event.outcome).inc()


def relay_failovers(registry: MetricsRegistry) -> Counter:
    """The counter of moves to a sender's second SMTP server (delivery/relays.py counts them
    as they happen: a move is no request's event)."""
    return registry.counter(
        "mail_relay_failovers",
        "Times delivery moved from a sender's first SMTP server, which could not be reached, "
        "to its second (smtp_host2).",
    )


class PoolState(Protocol):
    """What the gauges read of the dispatcher (delivery.dispatcher.DispatcherStats)."""

    @property
    def unfinished(self) -> int: ...
    @property
    def held_bytes(self) -> int: ...
    @property
    def busy(self) -> int: ...
    @property
    def threads(self) -> int: ...


def state_gauges(
    pool: Callable[[], PoolState],
    connections: Callable[[], int],
    paused: Callable[[], dict[str, float]] = dict,
) -> list[StateGauge]:
    """The gauges that are state: `pool` is the dispatcher's `stats`, `connections` the SMTP
    client's `open_connections`, `paused` the sender accounts paused now (1 each), all
    read-only."""
    return [
        StateGauge(
            "mail_sender_paused",
            "1 for a sender account paused because its SMTP server said it is over its limit "
            "(or after a run of transient failures); its messages wait, spending no attempt.",
            paused,
            label="sender",
        ),
        StateGauge(
            "mail_queue_depth",
            "Requests this process holds that have not ended (queued, sending, retrying, or "
            "final but not yet stored): what QUEUE_MAX bounds.",
            lambda: pool().unfinished,
        ),
        StateGauge(
            "mail_queue_bytes",
            "Bytes of message content held in memory: what QUEUE_MAX_BYTES bounds.",
            lambda: pool().held_bytes,
        ),
        StateGauge(
            "mail_sending_threads_busy",
            "Sending threads in the middle of an attempt.",
            lambda: pool().busy,
        ),
        StateGauge(
            "mail_sending_threads", "Sending threads in all (WORKERS).", lambda: pool().threads
        ),
        StateGauge(
            "mail_smtp_connections_open",
            "SMTP connections open (one per sending thread and server login, reused).",
            connections,
        ),
    ]
