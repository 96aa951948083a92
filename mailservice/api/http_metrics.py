"""HTTP answers and their latency, by route: the app's first before_request hook and an
after_request hook, counting into the MetricsRegistry.

Every answer the app gives is counted by route, method and status, refusals (4xx, 5xx; 429
for RATE_LIMIT and AUTH_FAIL_LIMIT) included, and timed from the first before_request hook to
the answer. The route is the rule the request matched (`/email-status/<request_id>`), never
the raw path, whose ids would make a series per request; a request that matched none (404,
405) is `<unmatched>`. Methods outside the usual ones are `other`, so that no client can mint
series. The gunicorn worker's own answers (408, 431), given before the app sees a request,
are not counted.
"""

from __future__ import annotations

import time

from flask import Flask, Response, g, request

from mailservice.events.metrics_registry import MetricsRegistry

UNMATCHED = "<unmatched>"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Seconds. Most answers take milliseconds; the waiting routes (API.md section 7) take up to
# SMTP_TIMEOUT + WAIT_MARGIN, 35 s by default.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def init_http_metrics(app: Flask, registry: MetricsRegistry) -> None:
    """Count and time every answer of `app`; call it before any other before_request hook
    is registered (the rate limiter's), so that the clock starts first."""
    answers = registry.counter(
        "mail_http_responses",
        "HTTP answers of the app, by route (the rule matched), method and status.",
        ["route", "method", "status"],
    )
    latency = registry.histogram(
        "mail_http_request_seconds",
        "Seconds from a request reaching the app to its answer, by route and method.",
        ["route", "method"],
        HTTP_BUCKETS,
    )

    @app.before_request
    def start_clock() -> None:
        g.http_metrics_started = time.perf_counter()

    @app.after_request
    def count_answer(response: Response) -> Response:
        rule = request.url_rule
        route = rule.rule if rule is not None else UNMATCHED
        method = request.method if request.method in METHODS else "other"
        answers.labels(route, method, str(response.status_code)).inc()
        started = g.pop("http_metrics_started", None)
        if started is not None:
            latency.labels(route, method).observe(time.perf_counter() - started)
        return response
