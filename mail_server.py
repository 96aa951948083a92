"""The service's entry point: the app factory `create_app()`, which wires the parts together,
and `main()`.

A send request goes: content type (415) -> size (413) -> strict JSON (400) -> key (401) ->
fields (400/403) -> `Acceptor.accept()` records it (202, or 503 when it can't). The routes are
blueprints in `mailservice.api` (`core_routes`, `legacy_routes` for the older services), the
problem answers in `mailservice.api.problems`; docs/ARCHITECTURE.md is the map.
Run it with `python mail_server.py [--demo | --check]` or `gunicorn 'mail_server:create_app()'`.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path
from types import FrameType

from flask import Flask
from werkzeug.serving import WSGIRequestHandler, make_server

from mailservice.api.admin_auth import EXTENSION as ADMIN
from mailservice.api.admin_auth import AdminAuth
from mailservice.api.auth_guard import init_auth_guard
from mailservice.api.batch_routes import batch_blueprint
from mailservice.api.core_routes import core_blueprint
from mailservice.api.dashboard_routes import dashboard_blueprint
from mailservice.api.docs_routes import docs_blueprint
from mailservice.api.http_metrics import init_http_metrics
from mailservice.api.legacy_routes import legacy_blueprint
from mailservice.api.lifecycle_routes import lifecycle_blueprint
from mailservice.api.metrics_routes import EXTENSION as METRICS
from mailservice.api.metrics_routes import metrics_blueprint
from mailservice.api.problems import register_error_handlers
from mailservice.api.rate_limit import init_rate_limit
from mailservice.api.request_path import EXTENSION, Service, credential_digest
from mailservice.api.schemas import check_header_value
from mailservice.api.sender_check_routes import EXTENSION as SENDER_CHECK
from mailservice.api.sender_check_routes import sender_check_blueprint
from mailservice.api.sms_gateways import gateway_table
from mailservice.api.suppression_routes import suppression_blueprint
from mailservice.api.template_routes import template_blueprint
from mailservice.api.tokens import TokenIssuer
from mailservice.api.v1_routes import v1_blueprint
from mailservice.config import Settings, load_settings
from mailservice.delivery.attempt import DeliveryAttempt
from mailservice.delivery.dispatcher import Dispatcher
from mailservice.delivery.sender_check import SenderCheck, check_deadline
from mailservice.delivery.smtp_client import SmtpClient
from mailservice.delivery.stack import build_stack
from mailservice.demo import DEMO_SENDER, demo_secrets, demo_senders, start_catcher
from mailservice.errors import ConfigError
from mailservice.logging_setup import configure_logging
from mailservice.outbox import Outbox
from mailservice.preflight import check_named_resources
from mailservice.runtime import pin_to_core, tune_gc, tune_malloc
from mailservice.senders import SenderDirectory, load_senders
from mailservice.serving.long_poll import STOP_HOOKS
from mailservice.smtp_in import build_listener
from mailservice.smtp_in.listener import SmtpListener
from mailservice.templating import TemplateLibrary
from worker_pool import WorkerPool, server_threads

logger = logging.getLogger(__name__)

NOTICES = "mailservice.failure_notices"  # app.extensions key of the FailureNotifier, if any
SMTP_IN = "mailservice.smtp_in"  # app.extensions key of the SMTP listener, if SMTP_LISTEN

# -- the app ---------------------------------------------------------------------------------


def create_app(
    settings: Settings | None = None,
    senders: SenderDirectory | None = None,
    outbox: Path | None = None,
) -> Flask:
    """The Flask app with its own store, pool and log (one pool per process); `outbox` is demo
    mode's catcher folder, which the dashboard shows."""
    settings = settings or load_settings()
    senders = senders if senders is not None else load_senders(settings)
    templates = load_templates(settings)  # before anything is opened or started
    stack = build_stack(
        settings, senders, lambda attempt: make_dispatcher(settings, senders, attempt)
    )
    app = Flask(__name__, static_folder=None)  # no /static route: each blueprint serves its own
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    tokens = TokenIssuer.with_secret_or_random(settings.token_secret, settings.token_ttl, senders)
    if stack.notices is not None:
        app.extensions[NOTICES] = stack.notices
    app.extensions[EXTENSION] = Service(settings, senders, stack, tokens, templates)
    app.extensions[ADMIN] = AdminAuth(settings.admin_token)  # the operator's pages
    app.extensions[METRICS] = stack.metrics
    # The check logs in with the senders' own client: what it sees is what sending sees.
    app.extensions[SENDER_CHECK] = SenderCheck(senders, stack.smtp, check_deadline(settings))
    # A gunicorn worker that starts to stop calls these before it waits for the requests in
    # progress: long polls answer their current status at once (serving/long_poll.py).
    app.extensions[STOP_HOOKS] = [stack.watch.close]

    init_http_metrics(app, stack.metrics)  # the first before_request hook: its clock starts first
    rate_limited = init_rate_limit(app, settings, credential_digest)
    guard = init_auth_guard(app, settings)  # AUTH_FAIL_LIMIT: 429 for clients failing 401
    if settings.smtp_listen:  # built here, started by the entry point (start_smtp_listener)
        listener = build_listener(settings, senders, stack.acceptor, guard, rate_limited.charge)
        app.extensions[SMTP_IN] = listener
        service = app.extensions[EXTENSION]
        app.extensions[EXTENSION] = replace(service, stop_first=(listener.stop,))
    app.register_blueprint(core_blueprint(rate_limited))
    app.register_blueprint(batch_blueprint(rate_limited))  # POST /send-email/batch
    app.register_blueprint(lifecycle_blueprint(rate_limited))  # cancel, retry
    app.register_blueprint(legacy_blueprint(rate_limited))
    app.register_blueprint(v1_blueprint(rate_limited, gateway_table(settings.sms_gateways)))
    app.register_blueprint(template_blueprint())
    app.register_blueprint(metrics_blueprint())  # GET /metrics, ADMIN_TOKEN only
    app.register_blueprint(sender_check_blueprint())  # GET /senders/check, ADMIN_TOKEN only
    app.register_blueprint(suppression_blueprint())  # /admin/suppressions, ADMIN_TOKEN only
    app.register_blueprint(dashboard_blueprint(None if outbox is None else Outbox(outbox)))
    app.register_blueprint(docs_blueprint(settings))  # GET /openapi.json, /docs
    register_error_handlers(app)
    stack.start()  # takes up what stopped processes left on a durable store
    return app


def make_dispatcher(
    settings: Settings, senders: SenderDirectory, attempt: DeliveryAttempt
) -> Dispatcher:
    """DISPATCHER=thread: WORKERS threads in this process run the attempts; celery: the
    requests are handed to Celery worker processes through the broker."""
    if settings.dispatcher == "celery":
        from mailservice.celery_app import make_celery, publisher  # imports Celery on use only
        from mailservice.delivery.celery_dispatcher import CeleryDispatcher

        return CeleryDispatcher(
            attempt, publisher(make_celery(settings)), queue_max=settings.queue_max
        )
    return WorkerPool(
        attempt,
        workers=settings.workers,
        queue_max=settings.queue_max,
        queue_max_bytes=settings.queue_max_bytes,
        server_threads=settings.smtp_server_threads
        or server_threads(settings.workers, len(senders.servers())),
        server_pause=settings.smtp_server_pause,
    )


def start_smtp_listener(app: Flask, reuse_port: bool = False) -> SmtpListener | None:
    """Start the app's SMTP listener (SMTP_LISTEN), if it has one; ConfigError if it cannot
    bind. `reuse_port`: every gunicorn worker binds the same port with SO_REUSEPORT and the
    kernel spreads the connections over them (API.md section 14); off for one process, so
    that a second service started by mistake fails to bind instead of sharing the port."""
    listener: SmtpListener | None = app.extensions.get(SMTP_IN)
    if listener is not None:
        listener.start(reuse_port=reuse_port)
    return listener


def load_templates(settings: Settings) -> TemplateLibrary:
    """Every template compiled (the shipped ones and TEMPLATES_DIR's); a ConfigError naming
    the file and line stops start-up. A template's parts together render to at most
    MAX_REQUEST_BYTES characters, no more than a hand-written request could hold."""
    return TemplateLibrary.load(
        settings.templates_dir, check_header_value, settings.max_request_bytes
    )


# -- running it ------------------------------------------------------------------------------


class AccessLogHandler(WSGIRequestHandler):
    """Werkzeug's request handler, logging paths without their query string: a client that
    wrongly puts a key in the URL must not get it written to the access log."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = self.path.partition("?")[0]
        self.log("info", '"%s %s %s" %s %s', self.command, path, self.request_version, code, size)


def _serve(app: Flask, settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT, then drain the pool and exit 0."""
    core = pin_to_core(0, settings.pin_cpus)
    if core is not None:
        logger.info("pinned to core %d (PIN_CPUS=0 turns this off)", core)
    tune_gc(settings.gc_tuning)
    tune_malloc()
    server = make_server(
        settings.host, settings.port, app, threaded=True, request_handler=AccessLogHandler
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    logger.info("listening on http://%s:%d", settings.host, settings.port)
    try:
        start_smtp_listener(app)
    except ConfigError as exc:  # SMTP_LISTEN's port is taken: stop as a bad setting does
        print(f"mail_server: configuration error: {exc}", file=sys.stderr)
        server.shutdown()
        app.extensions[EXTENSION].shutdown(0)
        return 2
    # A short timeout, not a bare wait(): the kernel may hand SIGTERM to any thread, and
    # Python runs the handler only when the main thread next executes; a main thread blocked
    # in an untimed wait could sleep through it (seen under load in make bench).
    while not stop.wait(0.2):
        pass
    logger.info("stopping: draining for up to %.0fs", settings.drain_seconds)
    left = app.extensions[EXTENSION].shutdown(settings.drain_seconds)  # 503 from here on
    server.shutdown()
    logger.info("stopped; %d request(s) left unsent", left)
    return 0


def check_senders(settings: Settings) -> int:
    """`--check`: every sender's SMTP login tried (nothing sent), one line each; 0 when all
    are ok, 1 otherwise. A bad senders file raises ConfigError (2, as for serving)."""
    senders = load_senders(settings)
    client = SmtpClient.for_settings(settings)
    report = SenderCheck(senders, client, check_deadline(settings)).run()
    for check in report.checks:
        print(check.line(), flush=True)
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Transactional email service")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--demo", action="store_true", help="embedded SMTP catcher, demo key")
    mode.add_argument(
        "--check",
        action="store_true",
        help="log in to every sender's SMTP server, send nothing, and exit: 0 all ok, 1 not",
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings(demo=args.demo)
        configure_logging(settings)  # LOG_LEVEL, LOG_FORMAT (aiosmtpd's chatter kept quiet)
        if args.check:  # needs no store, log file or port: only the senders and SMTP
            return check_senders(settings)
        check_named_resources(settings)  # as the gunicorn master does
        if args.demo:
            smtp_host, smtp_port = settings.smtp_host, settings.smtp_port
            outbox = Path.cwd() / "outbox"
            try:
                catcher = start_catcher(smtp_host, smtp_port, outbox)
            except OSError as exc:
                raise ConfigError(
                    f"demo SMTP catcher cannot listen on {smtp_host}:{smtp_port} ({exc}); "
                    "set SMTP_PORT to a free port"
                ) from exc
            key, senders = demo_senders(smtp_host, smtp_port)
            settings, made_up = demo_secrets(settings)
            app = create_app(settings, senders, outbox)
            secret_lines = "".join(f"  {line}\n" for line in made_up)
            if settings.smtp_listen:
                secret_lines += (
                    f"  SMTP submission: {settings.smtp_listen} (no TLS, loopback only): "
                    f"username {DEMO_SENDER}, password the demo API key\n"
                )
            print(
                f"\n  Demo mode: mail goes to the catcher on {smtp_host}:{smtp_port} and lands "
                f"in ./outbox/\n  Demo API key: {key}\n{secret_lines}"
                f"  Dashboard: http://{settings.host}:{settings.port}/ (log in with the admin "
                "token)\n\n"
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
        app = create_app(settings)
    except ConfigError as exc:
        print(f"mail_server: configuration error: {exc}", file=sys.stderr)
        return 2
    return _serve(app, settings)


if __name__ == "__main__":
    sys.exit(main())
