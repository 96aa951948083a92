"""gunicorn's own log lines in the service's log: the `logger_class` gunicorn.conf.py names.

gunicorn's `glogging.Logger` gives its error log (`gunicorn.error`: "Starting gunicorn",
"Booting worker with pid", "Worker exiting", timeouts) a stderr handler with gunicorn's own
format and stops it propagating to the root logger. `ServiceLogger` lets gunicorn set up as
usual and then takes that stderr handler away, so those lines go through the root handler that
`logging_setup.configure_logging()` installed in the master; the workers inherit both at fork
and log through this same object, so one LOG_FORMAT covers the master, the workers and the app.
A gunicorn error log sent to a file (`--error-logfile`) stays there, in the service's format.
An operator's own gunicorn log configuration (`--log-config`, `logconfig_dict`,
`--log-config-json`) is applied by gunicorn and left as it is.

Why a logger class: gunicorn builds it before its first line and runs `setup()` again on every
SIGHUP reload, so nothing slips out in gunicorn's format; the `on_starting` hook runs after
"Starting gunicorn" is written; and a `logconfig_dict` turns gunicorn's access-log code on for
every request (glogging's `access_log_enabled`), which gunicorn.conf.py keeps off.
"""

from __future__ import annotations

import logging
from typing import Any

from gunicorn.glogging import Logger

from mailservice.logging_setup import service_handler


class ServiceLogger(Logger):
    """gunicorn's Logger, its error log written in the service's format."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        if cfg.logconfig or cfg.logconfig_dict or cfg.logconfig_json:
            return
        handler = service_handler()
        if handler is None:  # the service's log was not configured: gunicorn's stays as it is
            return
        self.error_log.propagate = False  # as gunicorn has it, unless its stderr handler goes
        for own in [h for h in self.error_log.handlers if getattr(h, "_gunicorn", False)]:
            if type(own) is logging.StreamHandler:  # `--error-logfile -`, stderr: the root's
                self.error_log.removeHandler(own)
                self.error_log.propagate = True
            elif isinstance(own, logging.FileHandler):
                own.setFormatter(handler.formatter)
