"""The HTTP API: the app factory `create_app()`, its routes and error answers, and `main()`.

A send request goes: content type (415) -> size (413) -> strict JSON (400) -> key (401) ->
fields (400/403) -> `WorkerPool.accept()` records it (202, or 503 when it can't). Every error is
application/problem+json (RFC 9457). Run it with `python mail_server.py [--demo]` or
`gunicorn 'mail_server:create_app()'`.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from types import FrameType
from typing import Any

from flask import Flask, Response, current_app, jsonify, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from config import Settings, load_settings
from demo import demo_senders, start_catcher
from errors import ApiError, ConfigError, FieldError, StoreError, Unavailable
from mailer import SmtpClient
from request_log import RequestLog
from schemas import SendRequest, parse_json_object, validation_errors
from senders import Sender, SenderDirectory, load_senders
from status_store import StatusStore, store_from_url
from worker_pool import WorkerPool

logger = logging.getLogger(__name__)

EXTENSION = "mail_service"
RETRY_AFTER_SECONDS = "5"


@dataclass(frozen=True, slots=True)
class Service:
    """What the routes need, kept on `app.extensions["mail_service"]`."""

    settings: Settings
    senders: SenderDirectory
    store: StatusStore
    pool: WorkerPool
    request_log: RequestLog


def service() -> Service:
    return current_app.extensions[EXTENSION]


def problem(
    status: int, detail: str, errors: list[FieldError] | None = None, **headers: str
) -> Response:
    """An application/problem+json answer."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if status == 400:
        body["errors"] = [{"field": e.field, "message": e.message} for e in errors or []]
    response = jsonify(body)
    response.status_code = status
    response.mimetype = "application/problem+json"
    for name, value in headers.items():
        response.headers[name.replace("_", "-")] = value
    return response


# -- the request path ------------------------------------------------------------------------


def read_json_body() -> dict[str, Any]:
    """The body as one strict JSON object: 415, then 413, then 400."""
    if request.mimetype != "application/json":
        raise ApiError(415, "Send the body as JSON with Content-Type: application/json.")
    charset = request.mimetype_params.get("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise ApiError(415, "The JSON body must be UTF-8.")
    return parse_json_object(request.get_data(cache=False))


def presented_key(body: dict[str, Any]) -> str | None:
    """The API key: Authorization: Bearer, then X-API-Key, then the JSON field `key`."""
    auth = request.headers.get("Authorization", "")
    scheme, _, credentials = auth.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    if request.headers.get("X-API-Key"):
        return request.headers["X-API-Key"].strip()
    key = body.get("key")
    return key if isinstance(key, str) else None


def authenticate(body: dict[str, Any]) -> Sender:
    if any(name.lower() in ("key", "api_key", "apikey", "token") for name in request.args):
        raise ApiError(400, "API keys are never accepted in the URL; use a header.")
    sender = service().senders.authenticate(presented_key(body))
    if sender is None:
        raise ApiError(
            401,
            "A valid API key is required (Authorization: Bearer <key> or X-API-Key).",
            headers={"WWW-Authenticate": 'Bearer realm="mail"'},
        )
    return sender


def _count(value: Any) -> int:
    return len(value) if isinstance(value, list) else 1 if value is not None else 0


def validate_send(body: dict[str, Any], sender: Sender) -> SendRequest:
    """The validated request; 400 for bad fields, 403 for a foreign From address."""
    limit = service().settings.max_recipients
    total = sum(_count(body.get(name)) for name in ("recipient", "to", "cc", "bcc"))
    if total > limit:
        raise ApiError(
            400,
            f"At most {limit} recipients (to + cc + bcc) per message.",
            [FieldError("recipient", f"{total} recipients; the limit is {limit}")],
        )
    try:
        send = SendRequest.model_validate(body)
    except ValidationError as exc:
        raise ApiError(400, "The request has invalid fields.", validation_errors(exc)) from exc
    if send.from_ is not None and send.from_.lower() != sender.email.lower():
        raise ApiError(403, "`from` must be the address of the key's own sender.")
    return send


def accepted(pool: WorkerPool, send: SendRequest, sender: Sender) -> tuple[Response, str]:
    """Record the request (the 202 promise) and answer it."""
    record = pool.accept(send, sender)
    response = jsonify(
        message="Email request is being processed",
        request_id=record.request_id,
        status=str(record.status),
    )
    response.status_code = 202
    response.headers["Location"] = f"/email-status/{record.request_id}"
    return response, record.request_id


# -- the app ---------------------------------------------------------------------------------


def register_routes(app: Flask) -> None:
    @app.post("/send-email")
    def send_email() -> Response:
        body = read_json_body()
        sender = authenticate(body)
        send = validate_send(body, sender)
        response, _ = accepted(service().pool, send, sender)
        return response

    @app.get("/email-status/<request_id>")
    def email_status(request_id: str) -> Response:
        try:
            canonical = str(uuid.UUID(request_id))
        except ValueError:
            return problem(404, "No request has this id.")
        record = service().store.get(canonical)
        if record is None:
            return problem(404, "No request has this id (or its status has expired).")
        return jsonify(record.public())

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")


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


def create_app(settings: Settings | None = None, senders: SenderDirectory | None = None) -> Flask:
    """The Flask app with its own store, pool and log (one pool per process)."""
    settings = settings or load_settings()
    senders = senders if senders is not None else load_senders(settings)
    store = store_from_url(settings.status_store_url, settings.status_ttl)
    try:
        request_log = RequestLog(
            settings.email_log, settings.email_log_max_bytes, settings.email_log_backups
        )
    except OSError as exc:  # e.g. its folder is missing: a setting to fix, not a traceback
        raise ConfigError(f"EMAIL_LOG={settings.email_log!r} cannot be opened: {exc}") from exc
    pool = WorkerPool(
        store,
        SmtpClient(settings.smtp_timeout, settings.smtp_ca_file),
        request_log,
        workers=settings.workers,
        queue_max=settings.queue_max,
        max_attempts=settings.max_attempts,
        retry_backoff=settings.retry_backoff,
    )
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION] = Service(settings, senders, store, pool, request_log)
    register_routes(app)
    register_error_handlers(app)
    return app


# -- running it ------------------------------------------------------------------------------


def _serve(app: Flask, settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT, then drain the pool and exit 0."""
    from werkzeug.serving import make_server

    server = make_server(settings.host, settings.port, app, threaded=True)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    logger.info("listening on http://%s:%d", settings.host, settings.port)
    stop.wait()
    pool = app.extensions[EXTENSION].pool
    logger.info("stopping: draining for up to %.0fs", settings.drain_seconds)
    left = pool.drain(settings.drain_seconds)  # answers 503 from here on
    server.shutdown()
    logger.info("stopped; %d request(s) left unsent", left)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Transactional email service")
    parser.add_argument("--demo", action="store_true", help="embedded SMTP catcher, demo key")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-command chatter
    try:
        if args.demo:
            settings = load_settings(demo=True)
            smtp_host, smtp_port = settings.smtp_host, settings.smtp_port
            catcher = start_catcher(smtp_host, smtp_port, Path.cwd() / "outbox")
            key, senders = demo_senders(smtp_host, smtp_port)
            app = create_app(settings, senders)
            print(
                f"\n  Demo mode: mail goes to the catcher on {smtp_host}:{smtp_port} and lands "
                f"in ./outbox/\n  Demo API key: {key}\n\n"
                f"  curl -s -X POST http://{settings.host}:{settings.port}/send-email \\\n"
                f"    -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\\n"
                '    -d \'{"recipient": "you@example.com", "subject": "Hello", '
                '"body": "It works."}\'\n',
                flush=True,
            )
            try:
                return _serve(app, settings)
            finally:
                catcher.stop()
        settings = load_settings()
        app = create_app(settings)
    except ConfigError as exc:
        print(f"mail_server: configuration error: {exc}", file=sys.stderr)
        return 2
    return _serve(app, settings)


if __name__ == "__main__":
    sys.exit(main())
