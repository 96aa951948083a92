"""gunicorn settings for production: `gunicorn 'mail_server:create_app()'` reads this file.

Each worker process builds its own app, and with it its own sending pool (WORKERS threads), its
own SMTP connections and its own lease keeper; keep `preload_app` off so that the keeper's thread
starts in each worker. The worker class (http_worker.py) is gthread with each request read whole
before a thread takes it, so that slow clients hold no thread. With more than one worker, use a
shared store (STATUS_STORE_URL redis://...) and a shared limiter storage
(RATE_LIMIT_STORAGE_URL). On SIGTERM each worker drains its pool for up to DRAIN_SECONDS before
it exits. The service's own log (LOG_LEVEL, LOG_FORMAT) is configured here, in the master, and
gunicorn's own lines are written through it (mailservice/serving/gunicorn_logging.py).

Metrics (GET /metrics) use prometheus-client's multiprocess mode: the master makes the folder
ready (PROMETHEUS_MULTIPROC_DIR, emptied of an earlier run's files, or a fresh temporary one)
once: a reload (SIGHUP) runs this file again and gets the same folder back, its files kept
(metrics_dir.prepare_metrics_dir). It sets the variable before any worker starts, so that
each worker, a fork of the master, imports prometheus_client with it set; `child_exit` takes
a dead worker's state gauges out, and `on_exit` removes a temporary folder. Nothing imported
here imports prometheus_client.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mailservice.api.schemas import check_header_value
from mailservice.config import load_settings
from mailservice.errors import ConfigError
from mailservice.logging_setup import configure_logging
from mailservice.metrics_dir import prepare_metrics_dir
from mailservice.preflight import check_named_resources
from mailservice.runtime import pin_to_core, tune_gc, tune_malloc
from mailservice.senders import load_senders
from mailservice.smtp_in.listener import STOP_LIMIT
from mailservice.templating import TemplateLibrary

try:
    _settings = load_settings()
    # The service's own log (LOG_LEVEL, LOG_FORMAT) on stderr, in the master; the workers
    # inherit it at fork. gunicorn's own lines join it through `logger_class` below.
    configure_logging(_settings)
    load_senders(_settings)  # fail in the master, with one line, not in every worker
    check_named_resources(_settings)  # the store URL and the log's folder, opening neither
    # Compiled as create_app() compiles them: a template's syntax error is one line here, not
    # a traceback per worker. (mail_server itself is imported only by the workers.)
    TemplateLibrary.load(_settings.templates_dir, check_header_value, _settings.max_request_bytes)
    _metrics_dir = prepare_metrics_dir(_settings.prometheus_multiproc_dir)
except ConfigError as _exc:
    print(f"mail_server: configuration error: {_exc}", file=sys.stderr)
    sys.exit(2)

os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir.path  # before any worker is forked

bind = [f"{_settings.host}:{_settings.port}"]
workers = _settings.gunicorn_workers
# gthread's threads, but each request is read whole (head and body, up to MAX_REQUEST_BYTES) in
# the worker's poller loop before a thread takes it, with deadlines on slow clients: plain
# gthread let 100 clients sending a byte at a time hold every thread (see http_worker.py).
worker_class = "mailservice.serving.http_worker.BufferingThreadWorker"
threads = _settings.gunicorn_threads
# The worker's exit stops its SMTP listener (up to STOP_LIMIT) before the drain: room for both.
graceful_timeout = (
    int(_settings.drain_seconds) + 10 + (int(STOP_LIMIT) if _settings.smtp_listen else 0)
)
accesslog = None  # off: the request log (EMAIL_LOG) is the record of requests
loglevel = _settings.log_level.lower()  # gunicorn's own lines, at LOG_LEVEL too
# gunicorn's error log ("Booting worker", timeouts) through the service's handler and format.
logger_class = "mailservice.serving.gunicorn_logging.ServiceLogger"


def worker_exit(server, worker) -> None:
    """Drain this worker's pool: keep sending for up to DRAIN_SECONDS, then stop (its SMTP
    listener first: Service.shutdown)."""
    from mail_server import EXTENSION

    app = getattr(worker, "wsgi", None)
    service = getattr(app, "extensions", {}).get(EXTENSION) if app is not None else None
    if service is None:
        return
    left = service.shutdown(service.settings.drain_seconds)
    server.log.info("worker %s drained; %d request(s) left unsent", worker.pid, left)


def child_exit(server, worker) -> None:
    """A worker ended: its state gauges (queue depth, busy threads, open connections) leave
    the sums; its counts stay, as a counter's must."""
    from prometheus_client import multiprocess  # the variable is set: see the docstring

    multiprocess.mark_process_dead(worker.pid, _metrics_dir.path)


def on_exit(server) -> None:
    """The master stops: a temporary metrics folder made at start goes with it."""
    _metrics_dir.remove()


def post_fork(server, worker) -> None:
    """Pin each worker to one core (worker n to core n mod cores); see runtime.pin_to_core."""
    core = pin_to_core(worker.age - 1, _settings.pin_cpus)
    if core is not None:
        server.log.info("worker %s pinned to core %d", worker.pid, core)


def post_worker_init(worker) -> None:
    """Keep full garbage collections off the request path and give big messages' memory
    back; see runtime.tune_gc and tune_malloc. Start this worker's SMTP listener
    (SMTP_LISTEN): every worker binds the same port with SO_REUSEPORT and the kernel spreads
    the connections over them (API.md section 14)."""
    tune_malloc()
    tune_gc(_settings.gc_tuning)
    from mail_server import start_smtp_listener

    app = getattr(worker, "wsgi", None)
    if app is not None and hasattr(app, "extensions"):
        try:
            start_smtp_listener(app, reuse_port=True)
        except ConfigError as exc:
            worker.log.error("mail_server: configuration error: %s", exc)
            sys.exit(3)  # gunicorn's "worker failed to boot": the master stops
