"""GET /metrics: every metric in Prometheus's text format, for the operator only.

The answer needs ADMIN_TOKEN (`Authorization: Bearer <ADMIN_TOKEN>`, as Prometheus's
`authorization` scrape setting sends it, or the dashboard's session): 401 otherwise, and 401
for everyone while ADMIN_TOKEN is unset. A refused credential counts against the client's
AUTH_FAIL_LIMIT as every 401 does, and a client past it gets 429. It is not rate limited. The
text is the MetricsRegistry's, whichever gunicorn worker answers (docs/API.md, "Metrics").
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from mailservice.api.admin_auth import EXTENSION as ADMIN
from mailservice.api.admin_auth import AdminAuth
from mailservice.api.auth_guard import check_client, count_failure
from mailservice.events.metrics_registry import CONTENT_TYPE, MetricsRegistry

EXTENSION = "mail_metrics"  # app.extensions key of the app's MetricsRegistry


def metrics_blueprint() -> Blueprint:
    metrics = Blueprint("metrics", __name__)

    @metrics.get("/metrics")
    def scrape() -> Response:
        check_client()  # 429 for a client past AUTH_FAIL_LIMIT, before the token is looked at
        admin: AdminAuth = current_app.extensions[ADMIN]
        if not admin.is_admin(request):
            count_failure()
            admin.require(request)  # the 401, with its challenge
        registry: MetricsRegistry = current_app.extensions[EXTENSION]
        response = Response(registry.render(), content_type=CONTENT_TYPE)
        response.headers["Cache-Control"] = "no-store"
        return response

    return metrics
