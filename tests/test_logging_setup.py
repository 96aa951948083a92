"""The service's own log (logging_setup.py, serving/gunicorn_logging.py): LOG_LEVEL and
LOG_FORMAT, the JSON formatter on odd records, and the real processes' stderr, plain and under
gunicorn with two workers."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from gunicorn.config import Config

from mailservice.config import Settings, settings_from_mapping
from mailservice.errors import ConfigError
from mailservice.logging_setup import (
    FLOORS,
    JsonFormatter,
    ServiceLogHandler,
    configure_logging,
    formatter_for,
)
from mailservice.serving.gunicorn_logging import ServiceLogger
from mailservice.testing.ports import free_port
from mailservice.testing.service_process import ServiceProcess
from tests.conftest import API_KEY, wait_for, write_senders
from tests.test_config import start_server
from tests.test_durability import service_env
from tests.test_gunicorn import gunicorn_start_up

RID = "6f1c2a4e-0b1d-4c5e-9f00-123456789abc"
OTHER_RID = "0a0b0c0d-1111-4222-8333-444455556666"
TEXT_LINE = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \[\d+\] (DEBUG|INFO|WARNING|ERROR) \S+ .*"
)
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def record(msg: object, *args: object, **attrs: Any) -> logging.LogRecord:
    made = logging.LogRecord("mailservice.x", logging.WARNING, __file__, 1, msg, args, None)
    made.__dict__.update(attrs)
    return made


def as_json(rec: logging.LogRecord) -> dict[str, Any]:
    line = JsonFormatter().format(rec)
    assert "\n" not in line and line.isascii(), line
    return json.loads(line)


# -- the settings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "level"),
    [("debug", "DEBUG"), ("Info", "INFO"), (" WARNING ", "WARNING"), ("error", "ERROR")],
)
def test_log_level_is_read_in_any_case(raw, level):
    assert settings_from_mapping({"LOG_LEVEL": raw}).log_level == level


def test_log_format_is_read_in_any_case_and_defaults_are_info_and_text():
    assert settings_from_mapping({"LOG_FORMAT": "JSON"}).log_format == "json"
    assert (Settings().log_level, Settings().log_format) == ("INFO", "text")


@pytest.mark.parametrize(
    ("name", "raw"),
    [("LOG_LEVEL", "verbose"), ("LOG_LEVEL", "CRITICAL"), ("LOG_LEVEL", "warn"), ("LOG_LEVEL", ""),
     ("LOG_FORMAT", "xml"), ("LOG_FORMAT", "")],
)  # fmt: skip
def test_bad_log_setting_is_a_config_error_naming_it(name, raw):
    with pytest.raises(ConfigError, match=name):
        settings_from_mapping({name: raw})


# -- configuring the root logger -------------------------------------------------------------


@pytest.fixture
def root_logging() -> Iterator[logging.Logger]:
    """The root logger, put back afterwards: our handler removed, the levels restored."""
    root = logging.getLogger()
    names = [*FLOORS, "werkzeug"]
    levels = {name: logging.getLogger(name).level for name in names}
    root_level = root.level
    yield root
    for handler in [h for h in root.handlers if isinstance(h, ServiceLogHandler)]:
        root.removeHandler(handler)
    root.setLevel(root_level)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_log_level_sets_the_root_level_and_keeps_the_floors(root_logging):
    configure_logging(Settings(log_level="DEBUG"))
    assert root_logging.level == logging.DEBUG
    assert logging.getLogger("mail.log").level == logging.WARNING  # aiosmtpd's chatter
    assert logging.getLogger("urllib3").level == logging.INFO  # webhook paths and queries
    assert logging.getLogger("werkzeug").level == logging.DEBUG
    configure_logging(Settings(log_level="ERROR"))
    assert root_logging.level == logging.ERROR
    assert logging.getLogger("urllib3").level == logging.ERROR
    assert logging.getLogger("werkzeug").level == logging.ERROR


def test_configuring_twice_replaces_the_handler_and_keeps_others(root_logging):
    other = logging.NullHandler()
    root_logging.addHandler(other)
    try:
        configure_logging(Settings())
        handler = configure_logging(Settings(log_format="json"))
        ours = [h for h in root_logging.handlers if isinstance(h, ServiceLogHandler)]
        assert ours == [handler]
        assert isinstance(handler.formatter, JsonFormatter)
        assert handler.stream is sys.stderr
        assert other in root_logging.handlers
    finally:
        root_logging.removeHandler(other)


def test_a_record_below_log_level_is_not_written(root_logging):
    handler = configure_logging(Settings(log_level="WARNING", log_format="json"))
    handler.setStream(stream := io.StringIO())
    logging.getLogger("mailservice.y").info("not this request_id=%s", RID)
    logging.getLogger("mailservice.y").warning("this one request_id=%s", RID)
    lines = stream.getvalue().splitlines()
    assert [json.loads(line)["message"] for line in lines] == [f"this one request_id={RID}"]


# -- the formats -----------------------------------------------------------------------------


def test_text_is_the_format_of_before():
    line = formatter_for("text").format(record("sent %d", 3))
    assert TEXT_LINE.fullmatch(line)
    assert line.endswith(" WARNING mailservice.x sent 3")


def test_json_line_has_time_level_logger_message_and_pid():
    rec = record("attempt %d failed", 2)
    fields = as_json(rec)
    assert list(fields) == ["time", "level", "logger", "message", "pid"]
    assert ISO_UTC.fullmatch(fields["time"])
    shown = datetime.strptime(fields["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs(shown.timestamp() - rec.created) < 0.002
    assert (fields["level"], fields["logger"], fields["message"]) == (
        "WARNING",
        "mailservice.x",
        "attempt 2 failed",
    )
    assert fields["pid"] == rec.process


def test_request_id_comes_from_extra_or_else_from_the_message():
    assert as_json(record("done", request_id=RID))["request_id"] == RID
    assert as_json(record("attempt 1 failed request_id=%s: 451", RID))["request_id"] == RID
    notice = record("notice request_id=%s queued for failed request_id=%s", RID, OTHER_RID)
    assert as_json(notice)["request_id"] == RID  # the first one the message names
    given = record("notice request_id=%s", OTHER_RID, request_id=RID)
    assert as_json(given)["request_id"] == RID  # extra wins
    assert "request_id" not in as_json(record("request_id=not-a-uuid"))
    assert "request_id" not in as_json(record("prerequest_id=%s", RID))


def test_exc_info_and_stack_info_are_strings():
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        rec = record("unexpected error request_id=%s", RID, exc_info=sys.exc_info())
    fields = as_json(rec)
    assert fields["exc_info"].startswith("Traceback (most recent call last):")
    assert fields["exc_info"].endswith("ZeroDivisionError: division by zero")
    assert "exc_info" not in as_json(record("fine"))
    assert as_json(record("here", stack_info="Stack (most recent call last):\n  x"))[
        "stack_info"
    ].startswith("Stack")


class BadStr:
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class BadException(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")


ODD = [
    ("a dict as the message", ({"to": "a@example.com"},), "{'to': 'a@example.com'}"),
    ("bytes arguments", ("got %s and %r", b"\xff\x00", b"ok"), "got b'\\xff\\x00' and b'ok'"),
    ("a lone surrogate", ("name %s", "x\udc80y"), "name x\\udc80y"),
    ("a lone surrogate message", ("\ud800",), "\\ud800"),
    ("line breaks and NUL", ("a\nb\r\nc\x00d\u2028",), "a\nb\r\nc\x00d\u2028"),
    ("quotes and backslashes", ('say "hi" \\ %s', "}{"), 'say "hi" \\ }{'),
    ("a failing __str__ argument", ("value %s", BadStr()), None),
    ("a failing __str__ message", (BadStr(),), None),
    ("too few arguments", ("%s and %s", 1), None),
    ("a wrong placeholder", ("%d", "x"), None),
]


@pytest.mark.parametrize(("why", "call", "message"), ODD, ids=[o[0] for o in ODD])
def test_an_odd_record_still_gives_one_json_line(why, call, message, capsys):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.Logger("odd")  # not registered: no other handler sees these
    log.addHandler(handler)
    log.warning(*call)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].isascii(), lines
    fields = json.loads(lines[0])
    if message is not None:
        assert fields["message"] == message
    else:
        assert "not formattable" in fields["message"]
    assert capsys.readouterr().err == ""  # no "--- Logging error ---" from handleError


def test_an_exception_whose_str_fails_still_gives_a_line():
    try:
        raise BadException()
    except BadException:
        rec = record("boom", exc_info=sys.exc_info())
    assert "BadException" in as_json(rec)["exc_info"]


def test_a_record_missing_its_fields_still_gives_a_line():
    rec = record("half made")
    del rec.__dict__["created"], rec.__dict__["process"]
    fields = as_json(rec)
    assert ISO_UTC.fullmatch(fields["time"]) and fields["level"] == "WARNING"
    assert "could not be formatted" in fields["message"]


# -- gunicorn's logger class, in this process ------------------------------------------------


@pytest.fixture
def gunicorn_logs(root_logging) -> Iterator[io.StringIO]:
    """The service's JSON handler writing to a buffer; gunicorn's loggers put back after."""
    handler = configure_logging(Settings(log_format="json"))
    handler.setStream(stream := io.StringIO())
    yield stream
    for name in ("gunicorn.error", "gunicorn.access"):
        log = logging.getLogger(name)
        for h in list(log.handlers):
            log.removeHandler(h)
            h.close()
        log.propagate = True


def test_gunicorn_error_log_goes_through_the_service_handler(gunicorn_logs):
    logger = ServiceLogger(Config())
    assert not [h for h in logger.error_log.handlers if type(h) is logging.StreamHandler]
    logger.info("Booting worker with pid: %s", 42)
    logger.setup(logger.cfg)  # as on SIGHUP: still one line per record
    logger.info("again")
    lines = [json.loads(line) for line in gunicorn_logs.getvalue().splitlines()]
    assert [(f["logger"], f["message"]) for f in lines] == [
        ("gunicorn.error", "Booting worker with pid: 42"),
        ("gunicorn.error", "again"),
    ]
    assert not logger.access_log_enabled  # logconfig_dict would have turned it on


def test_gunicorn_error_logfile_keeps_its_file_in_the_service_format(gunicorn_logs, tmp_path):
    cfg = Config()
    cfg.set("errorlog", str(tmp_path / "gunicorn.err"))
    logger = ServiceLogger(cfg)
    logger.warning("Worker timeout request_id=%s", RID)
    [line] = (tmp_path / "gunicorn.err").read_text(encoding="utf-8").splitlines()
    assert json.loads(line)["request_id"] == RID
    assert gunicorn_logs.getvalue() == ""  # not twice


def test_an_operators_gunicorn_log_config_is_left_as_it_is(gunicorn_logs):
    cfg = Config()
    cfg.set("logconfig_dict", {"loggers": {"gunicorn.error": {"level": "INFO"}}})
    logger = ServiceLogger(cfg)
    logger.info("theirs")
    assert gunicorn_logs.getvalue() == ""


# -- the real processes ----------------------------------------------------------------------

PASSWORD = "pw-never-logged-123"
TOKEN_SECRET = "token-secret-never-logged"


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A service whose sender's SMTP server refuses connections: each attempt fails, is logged
    with its request_id, and the second one fails the request."""
    smtp_port = free_port()  # nothing listens there
    env = service_env(tmp_path, smtp_port, "memory://", MAX_ATTEMPTS="2", **extra)
    write_senders(tmp_path / "data.csv", smtp_port, password=PASSWORD)
    return env


def send_and_wait_for_its_line(service: ServiceProcess) -> str:
    status, _, body = service.request(
        "POST",
        "/send-email",
        {"recipient": "user@example.com", "subject": "s", "body": "b"},
        {"Authorization": f"Bearer {API_KEY}"},
    )
    assert status == 202, body
    request_id = body["request_id"]
    wait_for(lambda: f"attempt 1 failed request_id={request_id}" in service.output, timeout=15)
    return request_id


def json_lines(output: str) -> list[dict[str, Any]]:
    """Every line as JSON: fails on the first line that is not one object."""
    lines = output.splitlines()
    assert lines
    parsed = []
    for line in lines:
        fields = json.loads(line)
        assert isinstance(fields, dict) and ISO_UTC.fullmatch(fields["time"]), line
        parsed.append(fields)
    return parsed


def assert_no_secret(output: str) -> None:
    for secret in (API_KEY, PASSWORD, TOKEN_SECRET):
        assert secret not in output


def test_plain_process_writes_json_lines_with_the_request_id(tmp_path):
    service = ServiceProcess(
        tmp_path, env_for(tmp_path, LOG_FORMAT="json", TOKEN_SECRET=TOKEN_SECRET)
    ).start()
    try:
        request_id = send_and_wait_for_its_line(service)
    finally:
        code = service.stop()
    assert code == 0, service.log_tail()
    lines = json_lines(service.output)  # stdout and stderr together: every line is JSON
    attempt = [f for f in lines if f.get("request_id") == request_id]
    assert attempt and attempt[0]["logger"] == "mailservice.delivery.attempt"
    assert attempt[0]["level"] == "INFO"
    loggers = {f["logger"] for f in lines}
    assert {"__main__", "werkzeug", "mailservice.delivery.attempt"} <= loggers
    assert {f["pid"] for f in lines} == {lines[0]["pid"]}
    assert_no_secret(service.output)


def test_plain_process_at_warning_writes_only_warnings_in_text(tmp_path):
    service = ServiceProcess(tmp_path, env_for(tmp_path, LOG_LEVEL="warning")).start()
    try:
        assert service.request("GET", "/healthz")[0] == 200
        wait_for(lambda: "TOKEN_SECRET is not set" in service.output, timeout=10)
    finally:
        code = service.stop()
    assert code == 0, service.log_tail()
    lines = service.output.splitlines()
    assert lines and all(TEXT_LINE.fullmatch(line) for line in lines), lines
    assert all(" WARNING " in line or " ERROR " in line for line in lines), lines
    assert "listening on" not in service.output  # INFO
    assert "GET /healthz" not in service.output  # werkzeug's request line is INFO


def test_gunicorn_master_and_two_workers_write_json_lines(tmp_path):
    env = env_for(tmp_path, LOG_FORMAT="json", GUNICORN_WORKERS="2", TOKEN_SECRET=TOKEN_SECRET)
    service = ServiceProcess(tmp_path, env, kind="gunicorn").start()
    master = service.process.pid if service.process else 0
    try:
        request_id = send_and_wait_for_its_line(service)
    finally:
        code = service.stop()
    assert code == 0, service.log_tail()
    lines = json_lines(service.output)
    booting = [f for f in lines if f["message"].startswith("Booting worker with pid: ")]
    assert len(booting) == 2
    workers = {f["pid"] for f in booting}
    assert {f["message"].rsplit(" ", 1)[1] for f in booting} == {str(pid) for pid in workers}
    assert all(f["logger"] == "gunicorn.error" for f in booting)
    assert master not in workers and len(workers) == 2
    starting = [f for f in lines if f["message"].startswith("Starting gunicorn")]
    assert [f["pid"] for f in starting] == [master]
    attempt = [f for f in lines if f.get("request_id") == request_id]
    assert (
        attempt
        and attempt[0]["logger"] == "mailservice.delivery.attempt"
        and attempt[0]["pid"] in workers
    )
    assert sum("drained;" in f["message"] for f in lines) == 2
    assert_no_secret(service.output)


def test_gunicorn_text_lines_are_the_services_format(tmp_path):
    env = env_for(tmp_path, GUNICORN_WORKERS="2", TOKEN_SECRET=TOKEN_SECRET)
    service = ServiceProcess(tmp_path, env, kind="gunicorn").start()
    code = service.stop()
    assert code == 0, service.log_tail()
    lines = service.output.splitlines()
    assert lines and all(TEXT_LINE.fullmatch(line) for line in lines), lines
    assert sum(" INFO gunicorn.error Booting worker with pid: " in line for line in lines) == 2


@pytest.mark.parametrize(("name", "value"), [("LOG_LEVEL", "verbose"), ("LOG_FORMAT", "xml")])
def test_bad_log_setting_stops_start_up_with_one_line(tmp_path, name, value):
    result = start_server(tmp_path, **{name: value})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"mail_server: configuration error: {name}={value!r} is not valid: must be one of "
        + ("DEBUG, INFO, WARNING, ERROR" if name == "LOG_LEVEL" else "text, json")
    ]
    code, output = gunicorn_start_up(
        tmp_path, {**service_env(tmp_path, 1, "memory://"), name: value}
    )
    assert code == 2
    assert output.splitlines() == result.stderr.splitlines()
