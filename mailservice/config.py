"""Settings: every variable of API.md section 1, read once from the environment and `.env`.

`load_settings()` is the only reader of the environment. A bad value raises `ConfigError`
naming the variable, which the entry point turns into one clear line and a non-zero exit.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from dotenv import dotenv_values, find_dotenv

from mailservice.config_values import (
    admin_email,
    host_port,
    http_url,
    off_switch,
    one_of,
    or_zero,
    port_number,
    port_or_zero,
    positive,
    rate_limit,
    sms_gateways,
    switch,
)
from mailservice.errors import ConfigError

SECURITY_MODES = ("starttls", "ssl", "none")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
DISPATCHERS = ("thread", "celery")
# A route that waits for the outcome (API.md section 7) waits SMTP_TIMEOUT plus this long.
WAIT_MARGIN_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Settings:
    """The service's configuration; defaults are those of API.md section 1."""

    host: str = "127.0.0.1"
    port: int = 5000
    senders_file: str = "data.csv"
    credentials_key: str = ""
    smtp_host: str = "smtp.gmail.com"
    smtp_port: int = 587
    smtp_security: str = "starttls"
    smtp_timeout: float = 30.0
    smtp_data_timeout: float = 600.0
    smtp_server_threads: int = 0  # 0: all WORKERS for one server, half when there are several
    smtp_server_pause: float = 30.0
    sender_pause_seconds: float = 300.0  # an account over its limit, when the reply names no time
    sender_breaker_failures: int = 5  # transient failures in a row that pause an account
    smtp_ca_file: str = ""
    smtp_ehlo_name: str = ""  # empty: the machine's FQDN, else the connection's address literal
    relay_failback_seconds: float = 300.0  # on a sender's second server before the first again
    workers: int = 8
    queue_max: int = 10000
    queue_max_bytes: int = 256 * 1024 * 1024
    drain_seconds: float = 20.0
    lease_seconds: float = 30.0
    max_attempts: int = 5
    retry_backoff: float = 2.0
    status_store_url: str = "memory://"
    status_ttl: int = 604800
    failed_content_ttl: int = 86400  # a failed request's content, for a manual retry; 0: none
    rate_limit: str = "600/minute"
    rate_limit_storage_url: str = "memory://"
    auth_fail_limit: str = "20/minute"
    email_log: str = "email_log.txt"
    email_log_max_bytes: int = 10 * 1024 * 1024
    email_log_backups: int = 5
    token_secret: str = field(default="", repr=False)
    token_ttl: int = 3600
    wait_margin: float = WAIT_MARGIN_SECONDS
    max_request_bytes: int = 10 * 1024 * 1024
    max_recipients: int = 50
    allow_special_use_recipients: bool = False
    sms_gateways: str = ""  # more carriers for the SMS route: "name=gateway.domain,..."
    max_attachments: int = 10
    max_attachment_bytes: int = 10 * 1024 * 1024  # decoded, all of a message's attachments
    templates_dir: str = ""  # empty: only the shipped templates
    batch_max: int = 100
    max_schedule_days: int = 30  # how far ahead a `send_at` may be
    suppression_days: int = 30  # how long a "no such user" recipient stays suppressed
    webhook_url: str = ""  # empty: no deployment-wide webhook
    webhook_secret: str = field(default="", repr=False)
    webhook_allow_private: bool = False
    webhook_timeout: float = 5.0
    webhook_backoff: float = 120.0  # before the first retry; doubles: 6 tries over ~an hour
    admin_email: str = ""  # empty: no failure notices
    admin_token: str = field(default="", repr=False)  # empty: the operator's pages are closed
    # The service's own log (mailservice/logging_setup.py), not the request log EMAIL_LOG.
    log_level: str = "INFO"
    log_format: str = "text"
    # Process layout (API.md section 1): read by gunicorn.conf.py and mailservice.runtime.
    gunicorn_workers: int = 2
    gunicorn_threads: int = 8
    pin_cpus: bool = True
    gc_tuning: bool = True
    # gunicorn.conf.py: the folder of the workers' metric files; empty: a fresh temporary one.
    prometheus_multiproc_dir: str = ""
    # Who runs the attempts (API.md section 1, "Scaling out"): this process's thread pool, or
    # Celery worker processes fed through a broker (mailservice/celery_app.py).
    dispatcher: str = "thread"
    celery_broker_url: str = field(default="", repr=False)  # may carry a password
    celery_visibility_timeout: float = 3600.0
    celery_task_time_limit: float = 0.0  # 0: the longest attempt's time plus a margin
    worker_metrics_port: int = 0  # a Celery worker's /metrics; 0: none
    # The SMTP submission listener (API.md section 14): host:port, empty: off.
    smtp_listen: str = ""
    smtp_listen_cert: str = ""
    smtp_listen_key: str = ""
    smtp_listen_allow_plain: bool = False  # AUTH before STARTTLS from any address, not loopback
    smtp_listen_max_sessions: int = 100  # open SMTP sessions in one process
    smtp_listen_max_sessions_per_client: int = 10  # of those, from one client address


# variable name -> (Settings field, parser)
_VARIABLES: dict[str, tuple[str, Callable[[str], object]]] = {
    "HOST": ("host", str.strip),
    "PORT": ("port", port_number),
    "SENDERS_FILE": ("senders_file", str.strip),
    "CREDENTIALS_KEY": ("credentials_key", str.strip),
    "SMTP_HOST": ("smtp_host", str.strip),
    "SMTP_PORT": ("smtp_port", port_number),
    "SMTP_SECURITY": ("smtp_security", one_of(SECURITY_MODES, str.lower)),
    "SMTP_TIMEOUT": ("smtp_timeout", positive(float)),
    "SMTP_DATA_TIMEOUT": ("smtp_data_timeout", positive(float)),
    # Empty or 0: the default (all of WORKERS for one server, half for several).
    "SMTP_SERVER_THREADS": ("smtp_server_threads", or_zero(positive(int, allow_zero=True))),
    "SMTP_SERVER_PAUSE": ("smtp_server_pause", positive(float)),
    "SENDER_PAUSE_SECONDS": ("sender_pause_seconds", positive(float)),
    "SENDER_BREAKER_FAILURES": ("sender_breaker_failures", positive(int)),
    "SMTP_CA_FILE": ("smtp_ca_file", str.strip),
    "SMTP_EHLO_NAME": ("smtp_ehlo_name", str.strip),
    "RELAY_FAILBACK_SECONDS": ("relay_failback_seconds", positive(float)),
    "WORKERS": ("workers", positive(int)),
    "QUEUE_MAX": ("queue_max", positive(int)),
    "QUEUE_MAX_BYTES": ("queue_max_bytes", positive(int)),
    "DRAIN_SECONDS": ("drain_seconds", positive(float, allow_zero=True)),
    "LEASE_SECONDS": ("lease_seconds", positive(float)),
    "MAX_ATTEMPTS": ("max_attempts", positive(int)),
    "RETRY_BACKOFF": ("retry_backoff", positive(float, allow_zero=True)),
    "STATUS_STORE_URL": ("status_store_url", str.strip),
    "STATUS_TTL": ("status_ttl", positive(int)),
    "FAILED_CONTENT_TTL": ("failed_content_ttl", positive(int, allow_zero=True)),
    "RATE_LIMIT": ("rate_limit", rate_limit),
    "RATE_LIMIT_STORAGE_URL": ("rate_limit_storage_url", str.strip),
    "AUTH_FAIL_LIMIT": ("auth_fail_limit", rate_limit),
    "EMAIL_LOG": ("email_log", str.strip),
    "EMAIL_LOG_MAX_BYTES": ("email_log_max_bytes", positive(int)),
    "EMAIL_LOG_BACKUPS": ("email_log_backups", positive(int, allow_zero=True)),
    "TOKEN_SECRET": ("token_secret", str),
    "TOKEN_TTL": ("token_ttl", positive(int)),
    "WAIT_MARGIN": ("wait_margin", positive(float, allow_zero=True)),
    "MAX_REQUEST_BYTES": ("max_request_bytes", positive(int)),
    "MAX_RECIPIENTS": ("max_recipients", positive(int)),
    "ALLOW_SPECIAL_USE_RECIPIENTS": ("allow_special_use_recipients", off_switch),
    "SMS_GATEWAYS": ("sms_gateways", sms_gateways),
    "MAX_ATTACHMENTS": ("max_attachments", positive(int, allow_zero=True)),
    "MAX_ATTACHMENT_BYTES": ("max_attachment_bytes", positive(int, allow_zero=True)),
    "TEMPLATES_DIR": ("templates_dir", str.strip),
    "BATCH_MAX": ("batch_max", positive(int)),
    "MAX_SCHEDULE_DAYS": ("max_schedule_days", positive(int)),
    "SUPPRESSION_DAYS": ("suppression_days", positive(int)),
    "WEBHOOK_URL": ("webhook_url", http_url),
    "WEBHOOK_SECRET": ("webhook_secret", str),
    "WEBHOOK_ALLOW_PRIVATE": ("webhook_allow_private", off_switch),
    "WEBHOOK_TIMEOUT": ("webhook_timeout", positive(float)),
    "WEBHOOK_BACKOFF": ("webhook_backoff", positive(float, allow_zero=True)),
    "ADMIN_EMAIL": ("admin_email", admin_email),
    "ADMIN_TOKEN": ("admin_token", str.strip),
    "LOG_LEVEL": ("log_level", one_of(LOG_LEVELS, str.upper)),
    "LOG_FORMAT": ("log_format", one_of(LOG_FORMATS, str.lower)),
    "GUNICORN_WORKERS": ("gunicorn_workers", positive(int)),
    "GUNICORN_THREADS": ("gunicorn_threads", positive(int)),
    "PIN_CPUS": ("pin_cpus", switch),
    "GC_TUNING": ("gc_tuning", switch),
    "PROMETHEUS_MULTIPROC_DIR": ("prometheus_multiproc_dir", str.strip),
    "DISPATCHER": ("dispatcher", one_of(DISPATCHERS, str.lower)),
    "CELERY_BROKER_URL": ("celery_broker_url", str.strip),
    "CELERY_VISIBILITY_TIMEOUT": ("celery_visibility_timeout", positive(float)),
    "CELERY_TASK_TIME_LIMIT": ("celery_task_time_limit", or_zero(positive(float, True))),
    "WORKER_METRICS_PORT": ("worker_metrics_port", or_zero(port_or_zero)),
    "SMTP_LISTEN": ("smtp_listen", host_port),
    "SMTP_LISTEN_CERT": ("smtp_listen_cert", str.strip),
    "SMTP_LISTEN_KEY": ("smtp_listen_key", str.strip),
    "SMTP_LISTEN_ALLOW_PLAIN": ("smtp_listen_allow_plain", off_switch),
    "SMTP_LISTEN_MAX_SESSIONS": ("smtp_listen_max_sessions", positive(int)),
    "SMTP_LISTEN_MAX_SESSIONS_PER_CLIENT": (
        "smtp_listen_max_sessions_per_client",
        positive(int),
    ),
}


def settings_from_mapping(env: Mapping[str, str], **overrides: object) -> Settings:
    """Build Settings from a mapping of variables; raise ConfigError naming a bad one."""
    values: dict[str, object] = {}
    for name, (attr, parse) in _VARIABLES.items():
        raw = env.get(name)
        if raw is None:
            continue
        try:
            values[attr] = parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{name}={raw!r} is not valid: {exc}") from exc
    values.update(overrides)
    settings = Settings(**values)  # type: ignore[arg-type]
    if settings.queue_max_bytes < settings.max_request_bytes:
        raise ConfigError(
            f"QUEUE_MAX_BYTES={settings.queue_max_bytes} is smaller than "
            f"MAX_REQUEST_BYTES={settings.max_request_bytes}: a large request could never be taken"
        )
    if settings.webhook_url and not settings.webhook_secret:
        raise ConfigError("WEBHOOK_URL is set but WEBHOOK_SECRET is not: webhooks are signed")
    if settings.dispatcher == "celery":
        _check_celery(settings)
    if bool(settings.smtp_listen_cert) != bool(settings.smtp_listen_key):
        raise ConfigError("SMTP_LISTEN_CERT and SMTP_LISTEN_KEY go together: set both or neither")
    return settings


def longest_attempt(settings: Settings) -> float:
    """An upper bound on one delivery attempt: connect, greeting, EHLO, STARTTLS, AUTH, MAIL,
    RCPT (each at most SMTP_TIMEOUT; RCPT once per recipient), DATA's final reply (at most
    SMTP_DATA_TIMEOUT) and QUIT, plus the store's writes around them."""
    steps = 8 + settings.max_recipients
    return steps * settings.smtp_timeout + settings.smtp_data_timeout + 30.0


def celery_time_limit(settings: Settings) -> float:
    """CELERY_TASK_TIME_LIMIT, or by default the longest attempt plus a minute."""
    return settings.celery_task_time_limit or longest_attempt(settings) + 60.0


def _check_celery(settings: Settings) -> None:
    """DISPATCHER=celery: a broker, a store every process shares, and the time limits in the
    order that makes a redelivered task harmless (mailservice/celery_app.py says why)."""
    if not settings.celery_broker_url:
        raise ConfigError("DISPATCHER=celery needs CELERY_BROKER_URL (redis:// or amqp://)")
    if settings.status_store_url.startswith("memory:"):
        raise ConfigError(
            "DISPATCHER=celery needs a store every process shares: STATUS_STORE_URL=memory:// "
            "lives in one process (use redis://, or sqlite:// on one machine)"
        )
    limit = celery_time_limit(settings)
    if limit >= settings.celery_visibility_timeout:
        raise ConfigError(
            f"CELERY_TASK_TIME_LIMIT ({limit:.0f} s) must be below CELERY_VISIBILITY_TIMEOUT "
            f"({settings.celery_visibility_timeout:.0f} s): else a task still running is "
            "handed to a second worker"
        )


# Demo mode (API.md section 8) sends to its embedded catcher unless told otherwise.
# Its SMTP listener too, for apps that only speak SMTP (the banner prints it).
DEMO_DEFAULTS = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": "8025", "SMTP_LISTEN": "127.0.0.1:2525"}


def load_settings(demo: bool = False, **overrides: object) -> Settings:
    """Read `.env` from the working directory, then the real environment, which wins."""
    dotenv_path = find_dotenv(usecwd=True)
    env: dict[str, str] = dict(DEMO_DEFAULTS) if demo else {}
    if dotenv_path:
        env.update({k: v for k, v in dotenv_values(dotenv_path).items() if v is not None})
    env.update(os.environ)
    if demo:
        overrides.setdefault("smtp_security", "none")
        overrides.setdefault("webhook_allow_private", True)  # a receiver on this machine
    return settings_from_mapping(env, **overrides)
