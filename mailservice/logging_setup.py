"""The service's own log: the root logger, configured from Settings (`LOG_LEVEL`, `LOG_FORMAT`).

This is what the code says through `logging` (retries, outages, recovery, start and stop), on
stderr; not the request log `EMAIL_LOG` (events/request_log.py), which keeps its own format.
Only the entry points call `configure_logging()`: `mail_server.main()` and `gunicorn.conf.py`,
whose logger class (serving/gunicorn_logging.py) sends gunicorn's own lines through the same
handler.

`text` is `%(asctime)s [%(process)d] %(levelname)s %(name)s %(message)s`. `json` is one JSON
object a line:
`time` (ISO 8601, UTC), `level`, `logger`, `message`, `request_id` when the record has one
(`extra={"request_id": ...}`, or else the first `request_id=<uuid>` its message names), `pid`,
and `exc_info` / `stack_info` as text when present. A JSON line is pure ASCII (everything else
escaped), and a record that cannot be formatted (a failing `__str__`, arguments that do not fit
the message, a lone surrogate) still gives one valid line.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from mailservice.config import Settings

TEXT_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s %(message)s"
# How the code names a request in its messages (`request_id=%s`); ids are uuid4s.
_REQUEST_ID = re.compile(
    r"\brequest_id=([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\b"
)
# Libraries' loggers that LOG_LEVEL never lowers below these levels.
FLOORS = {
    # aiosmtpd (the demo catcher): a line per SMTP command, and at DEBUG the message itself.
    "mail.log": logging.WARNING,
    # At DEBUG urllib3 writes each webhook POST's path and query, where a receiver's token may be.
    "urllib3": logging.INFO,
}


class ServiceLogHandler(logging.StreamHandler):
    """The root logger's handler to stderr that `configure_logging()` installs; found again by
    its type, so that configuring twice replaces it instead of doubling every line."""


def configure_logging(settings: Settings) -> ServiceLogHandler:
    """Send every logger's records at LOG_LEVEL and above to stderr, formatted as LOG_FORMAT.
    Other handlers on the root logger (a test runner's) are left alone."""
    level = logging.getLevelNamesMapping()[settings.log_level]
    handler = ServiceLogHandler(sys.stderr)
    handler.setFormatter(formatter_for(settings.log_format))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, ServiceLogHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name, floor in FLOORS.items():
        logging.getLogger(name).setLevel(max(level, floor))
    # Werkzeug sets its logger to INFO on first use when it has no level of its own, which
    # would keep its request lines at LOG_LEVEL=WARNING.
    logging.getLogger("werkzeug").setLevel(level)
    return handler


def service_handler() -> ServiceLogHandler | None:
    """The handler `configure_logging()` installed on the root logger, if any."""
    return next((h for h in logging.getLogger().handlers if isinstance(h, ServiceLogHandler)), None)


def formatter_for(log_format: str) -> logging.Formatter:
    """The formatter of a LOG_FORMAT value (`text` or `json`)."""
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


class JsonFormatter(logging.Formatter):
    """One JSON object a line, in ASCII; never raises, whatever the record holds."""

    def format(self, record: logging.LogRecord) -> str:
        try:
            fields = self._fields(record)
        except Exception as exc:  # a record built oddly (not by Logger): still one line
            fields = {
                "time": _utc(datetime.now(UTC).timestamp()),
                "level": _text(getattr(record, "levelname", "ERROR")),
                "logger": _text(getattr(record, "name", "")),
                "message": f"a log record could not be formatted ({type(exc).__name__})",
            }
        return json.dumps(fields, ensure_ascii=True, separators=(",", ":"))

    def _fields(self, record: logging.LogRecord) -> dict[str, Any]:
        message = _message(record)
        fields: dict[str, Any] = {
            "time": _utc(record.created),
            "level": _text(record.levelname),
            "logger": _text(record.name),
            "message": message,
        }
        request_id = _request_id(record, message)
        if request_id:
            fields["request_id"] = request_id
        fields["pid"] = record.process
        if record.exc_info:
            fields["exc_info"] = _guarded(lambda: self.formatException(record.exc_info))
        elif record.exc_text:
            fields["exc_info"] = _text(record.exc_text)
        if record.stack_info:
            fields["stack_info"] = _guarded(lambda: self.formatStack(record.stack_info))
        return fields


def _utc(created: float) -> str:
    """2026-11-22T04:01:25.397Z"""
    moment = datetime.fromtimestamp(created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _message(record: logging.LogRecord) -> str:
    try:
        return _text(record.getMessage())
    except Exception as exc:  # a failing __str__, or arguments that do not fit the message
        return _text(
            f"{_safe_repr(record.msg)} with arguments {_safe_repr(record.args)} "
            f"(not formattable: {type(exc).__name__})"
        )


def _request_id(record: logging.LogRecord, message: str) -> str | None:
    given = record.__dict__.get("request_id")
    if given is not None:
        return _text(given) or None
    match = _REQUEST_ID.search(message)
    return match[1] if match else None


def _guarded(render: Callable[[], str]) -> str:
    try:
        return _text(render())
    except Exception as exc:
        return f"(not formattable: {type(exc).__name__})"


def _text(value: object) -> str:
    """`value` as text that encodes: a lone surrogate becomes its escape `\\udc80`."""
    if not isinstance(value, str):
        try:
            value = str(value)
        except Exception:
            value = _safe_repr(value)
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _safe_repr(value: object) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(_safe_repr(item) for item in value) + ")"
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__name__} object>"
