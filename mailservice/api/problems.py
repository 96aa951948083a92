"""Every error as application/problem+json (RFC 9457, API.md section 6), for the whole app.

`register_error_handlers(app)` turns the service's own errors (ApiError, StoreError,
Unavailable), werkzeug's HTTP errors (404, 405, 413) and anything unexpected (a 500, logged
with its traceback, never shown) into problem answers.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from mailservice.api.request_path import problem
from mailservice.errors import ApiError, StoreError, Unavailable

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "5"


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> Response:
        return problem(exc.status, exc.detail, exc.errors, **exc.headers)

    @app.errorhandler(StoreError)
    def store_error(exc: StoreError) -> Response:
        logger.warning("status store unavailable: %s", exc)
        return problem(503, "The status store is unreachable.", Retry_After=RETRY_AFTER_SECONDS)

    @app.errorhandler(Unavailable)
    def unavailable(exc: Unavailable) -> Response:
        return problem(503, f"Not accepting requests now: {exc}", Retry_After=RETRY_AFTER_SECONDS)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        detail = {
            404: "No such route.",
            405: f"Method {request.method} is not allowed here.",
            413: "The request body is too large (MAX_REQUEST_BYTES).",
        }.get(status, exc.description or "")
        response = problem(status, detail)
        if status == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return problem(500, "An internal error occurred; it has been logged.")
