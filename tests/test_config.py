"""Settings from the environment and `.env` (API.md section 1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailservice import config
from mailservice.config import Settings, load_settings, settings_from_mapping
from mailservice.errors import ConfigError
from mailservice.testing.ports import free_port


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No service variable in the environment; the working directory is an empty tmp dir."""
    for name in config._VARIABLES:
        monkeypatch.delenv(name, raising=False)
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    return workdir


API_DEFAULTS = {
    "host": "127.0.0.1",
    "port": 5000,
    "senders_file": "data.csv",
    "smtp_host": "smtp.gmail.com",
    "smtp_port": 587,
    "smtp_security": "starttls",
    "smtp_timeout": 30,
    "workers": 8,
    "queue_max": 10000,
    "drain_seconds": 20,
    "max_attempts": 5,
    "retry_backoff": 2,
    "status_store_url": "memory://",
    "status_ttl": 604800,
    "failed_content_ttl": 86400,
    "rate_limit": "600/minute",
    "rate_limit_storage_url": "memory://",
    "email_log": "email_log.txt",
    "token_ttl": 3600,
    "max_request_bytes": 10485760,
    "max_recipients": 50,
    "gunicorn_workers": 2,
    "gunicorn_threads": 8,
    "pin_cpus": True,
    "gc_tuning": True,
}


def test_defaults_are_those_of_the_api_contract(clean_env):
    settings = load_settings()
    for name, value in API_DEFAULTS.items():
        assert getattr(settings, name) == value, name
    assert settings == Settings()


def test_settings_from_an_empty_mapping_are_the_defaults():
    assert settings_from_mapping({}) == Settings()


def test_every_variable_is_read(clean_env, monkeypatch):
    values = {
        "HOST": "192.0.2.1",
        "PORT": "8080",
        "SENDERS_FILE": "/etc/senders.csv",
        "SMTP_HOST": "mail.example.com",
        "SMTP_PORT": "465",
        "SMTP_SECURITY": "SSL",
        "SMTP_TIMEOUT": "2.5",
        "WORKERS": "3",
        "QUEUE_MAX": "7",
        "DRAIN_SECONDS": "0",
        "MAX_ATTEMPTS": "2",
        "RETRY_BACKOFF": "0.5",
        "STATUS_STORE_URL": "memory://",
        "STATUS_TTL": "60",
        "RATE_LIMIT": "",
        "RATE_LIMIT_STORAGE_URL": "memory://",
        "EMAIL_LOG": "/var/log/mail.txt",
        "TOKEN_SECRET": "s3cret",
        "TOKEN_TTL": "120",
        "MAX_REQUEST_BYTES": "1000",
        "MAX_RECIPIENTS": "5",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert (settings.host, settings.port) == ("192.0.2.1", 8080)
    assert settings.senders_file == "/etc/senders.csv"
    assert (settings.smtp_host, settings.smtp_port) == ("mail.example.com", 465)
    assert settings.smtp_security == "ssl"
    assert settings.smtp_timeout == 2.5
    assert (settings.workers, settings.queue_max, settings.drain_seconds) == (3, 7, 0)
    assert (settings.max_attempts, settings.retry_backoff) == (2, 0.5)
    assert (settings.status_ttl, settings.rate_limit) == (60, "")
    assert settings.email_log == "/var/log/mail.txt"
    assert (settings.token_secret, settings.token_ttl) == ("s3cret", 120)
    assert (settings.max_request_bytes, settings.max_recipients) == (1000, 5)


def test_fault_settings_are_read(clean_env, monkeypatch):
    for name, value in {
        "SMTP_DATA_TIMEOUT": "90",
        "QUEUE_MAX_BYTES": "20000000",
        "AUTH_FAIL_LIMIT": "5/minute",
        "SMTP_SERVER_THREADS": "3",
        "SMTP_SERVER_PAUSE": "12.5",
    }.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert (settings.smtp_data_timeout, settings.queue_max_bytes) == (90, 20_000_000)
    assert settings.auth_fail_limit == "5/minute"
    assert (settings.smtp_server_threads, settings.smtp_server_pause) == (3, 12.5)


def test_failed_content_ttl_is_read_and_zero_means_none_kept(clean_env, monkeypatch):
    monkeypatch.setenv("FAILED_CONTENT_TTL", "0")
    assert load_settings().failed_content_ttl == 0
    monkeypatch.setenv("FAILED_CONTENT_TTL", "600")
    assert load_settings().failed_content_ttl == 600


def test_content_and_webhook_settings_are_read(clean_env, monkeypatch):
    for name, value in {
        "MAX_ATTACHMENTS": "0",
        "MAX_ATTACHMENT_BYTES": "2048",
        "TEMPLATES_DIR": " /srv/templates ",
        "BATCH_MAX": "7",
        "WEBHOOK_URL": "https://hooks.example.com/mail?x=1",
        "WEBHOOK_SECRET": "whsec",
        "WEBHOOK_ALLOW_PRIVATE": "yes",
        "WEBHOOK_TIMEOUT": "1.5",
        "WEBHOOK_BACKOFF": "0",
        "ADMIN_EMAIL": "ops@example.com",
    }.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert (settings.max_attachments, settings.max_attachment_bytes) == (0, 2048)
    assert (settings.templates_dir, settings.batch_max) == ("/srv/templates", 7)
    assert settings.webhook_url == "https://hooks.example.com/mail?x=1"
    assert (settings.webhook_secret, settings.webhook_allow_private) == ("whsec", True)
    assert (settings.webhook_timeout, settings.webhook_backoff) == (1.5, 0)
    assert settings.admin_email == "ops@example.com"
    assert "whsec" not in repr(settings)


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"WEBHOOK_URL": "ftp://hooks.example.com/"}, "WEBHOOK_URL"),
        ({"WEBHOOK_URL": "https:///path"}, "WEBHOOK_URL"),
        ({"WEBHOOK_URL": "https://hooks.example.com/"}, "WEBHOOK_SECRET"),
        ({"ADMIN_EMAIL": "not an address"}, "ADMIN_EMAIL"),
        ({"BATCH_MAX": "0"}, "BATCH_MAX"),
    ],
)
def test_bad_content_or_webhook_setting_names_its_variable(
    clean_env, monkeypatch, variables, named
):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=named):
        load_settings()


def test_process_layout_settings_are_read(clean_env, monkeypatch):
    for name, value in {
        "GUNICORN_WORKERS": "4",
        "GUNICORN_THREADS": "16",
        "PIN_CPUS": "0",
        "GC_TUNING": "0",
    }.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert (settings.gunicorn_workers, settings.gunicorn_threads) == (4, 16)
    assert (settings.pin_cpus, settings.gc_tuning) == (False, False)


def test_process_layout_settings_are_read_from_dotenv(clean_env):
    (clean_env / ".env").write_text(
        "GUNICORN_WORKERS=3\nGUNICORN_THREADS=5\nPIN_CPUS=0\nGC_TUNING=off\n", encoding="utf-8"
    )
    settings = load_settings()
    assert (settings.gunicorn_workers, settings.gunicorn_threads) == (3, 5)
    assert (settings.pin_cpus, settings.gc_tuning) == (False, False)


SWITCHES = [
    ("1", True),
    ("true", True),
    ("TRUE", True),
    ("yes", True),
    ("on", True),
    (" 1 ", True),
    ("", True),  # empty is the default, as before these were checked
    ("0", False),
    ("false", False),
    ("False", False),
    ("no", False),
    ("off", False),
]


@pytest.mark.parametrize("name", ["PIN_CPUS", "GC_TUNING"])
@pytest.mark.parametrize(("raw", "expected"), SWITCHES)
def test_switches_take_the_usual_spellings(clean_env, monkeypatch, name, raw, expected):
    monkeypatch.setenv(name, raw)
    settings = load_settings()
    assert getattr(settings, config._VARIABLES[name][0]) is expected


@pytest.mark.parametrize("value", ["", "0"])
def test_empty_or_zero_smtp_server_threads_is_the_automatic_default(clean_env, monkeypatch, value):
    monkeypatch.setenv("SMTP_SERVER_THREADS", value)
    assert load_settings().smtp_server_threads == 0


def test_queue_max_bytes_below_max_request_bytes_is_refused(clean_env, monkeypatch):
    monkeypatch.setenv("QUEUE_MAX_BYTES", "1000")
    monkeypatch.setenv("MAX_REQUEST_BYTES", "2000")
    with pytest.raises(ConfigError, match="QUEUE_MAX_BYTES=1000 is smaller than MAX_REQUEST_BYTES"):
        load_settings()


def test_token_secret_is_not_in_the_repr():
    assert "s3cret-token" not in repr(Settings(token_secret="s3cret-token"))


BAD_VALUES = [
    ("PORT", "abc"),
    ("PORT", "0"),
    ("PORT", "65536"),
    ("PORT", "-1"),
    ("PORT", "5000.5"),
    ("SMTP_PORT", "smtp"),
    ("SMTP_PORT", "99999"),
    ("SMTP_SECURITY", "foo"),
    ("SMTP_SECURITY", "tls"),
    ("SMTP_TIMEOUT", "abc"),
    ("SMTP_TIMEOUT", "0"),
    ("SMTP_TIMEOUT", "-5"),
    ("SMTP_TIMEOUT", "nan"),
    ("SMTP_TIMEOUT", "inf"),
    ("WORKERS", "0"),
    ("WORKERS", "-2"),
    ("WORKERS", "many"),
    ("WORKERS", "2.5"),
    ("QUEUE_MAX", "0"),
    ("QUEUE_MAX", "lots"),
    ("DRAIN_SECONDS", "-1"),
    ("DRAIN_SECONDS", "soon"),
    ("DRAIN_SECONDS", "nan"),
    ("MAX_ATTEMPTS", "0"),
    ("MAX_ATTEMPTS", "x"),
    ("RETRY_BACKOFF", "-1"),
    ("RETRY_BACKOFF", "nan"),
    ("RETRY_BACKOFF", "inf"),
    ("STATUS_TTL", "0"),
    ("STATUS_TTL", "week"),
    ("FAILED_CONTENT_TTL", "-1"),
    ("FAILED_CONTENT_TTL", "day"),
    ("RATE_LIMIT", "garbage"),
    ("RATE_LIMIT", "10 per fortnight"),
    ("TOKEN_TTL", "0"),
    ("MAX_REQUEST_BYTES", "0"),
    ("MAX_REQUEST_BYTES", "10MB"),
    ("MAX_RECIPIENTS", "0"),
    ("MAX_RECIPIENTS", "fifty"),
    ("EMAIL_LOG_MAX_BYTES", "0"),
    ("EMAIL_LOG_BACKUPS", "-1"),
    ("GUNICORN_WORKERS", "two"),
    ("GUNICORN_WORKERS", "0"),
    ("GUNICORN_WORKERS", "2.5"),
    ("GUNICORN_WORKERS", ""),
    ("GUNICORN_THREADS", "0"),
    ("GUNICORN_THREADS", "-8"),
    ("GUNICORN_THREADS", "eight"),
    ("PIN_CPUS", "2"),
    ("PIN_CPUS", "maybe"),
    ("GC_TUNING", "of"),
    ("GC_TUNING", "disabled"),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES, ids=[f"{n}={v}" for n, v in BAD_VALUES])
def test_bad_value_raises_config_error_naming_the_variable(clean_env, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert name in str(info.value)
    assert "Traceback" not in str(info.value)


def test_dotenv_is_read_and_real_environment_wins(clean_env, monkeypatch):
    (clean_env / ".env").write_text(
        "PORT=6001\nWORKERS=3\nSMTP_HOST=from-dotenv.example\n# a comment\n", encoding="utf-8"
    )
    monkeypatch.setenv("WORKERS", "4")
    settings = load_settings()
    assert settings.port == 6001
    assert settings.smtp_host == "from-dotenv.example"
    assert settings.workers == 4


def test_bad_value_in_dotenv_names_the_variable(clean_env):
    (clean_env / ".env").write_text("SMTP_SECURITY=plaintext\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="SMTP_SECURITY"):
        load_settings()


def test_dotenv_does_not_change_the_process_environment(clean_env):
    (clean_env / ".env").write_text("PORT=6002\n", encoding="utf-8")
    assert load_settings().port == 6002
    assert "PORT" not in os.environ


def test_demo_defaults_send_to_the_local_catcher(clean_env):
    settings = load_settings(demo=True)
    assert (settings.smtp_host, settings.smtp_port, settings.smtp_security) == (
        "127.0.0.1",
        8025,
        "none",
    )


def test_demo_smtp_port_can_be_set(clean_env, monkeypatch):
    monkeypatch.setenv("SMTP_PORT", "2525")
    assert load_settings(demo=True).smtp_port == 2525


# -- start-up with a bad setting -----------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent


def start_server(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `python mail_server.py` with a valid senders file and these variables."""
    (tmp_path / "data.csv").write_text(
        "key,email,app_password\nk-123,me@example.com,pw-123\n", encoding="utf-8"
    )
    full_env = {k: v for k, v in os.environ.items() if k not in config._VARIABLES}
    full_env.update({"PORT": str(free_port()), **env})
    return subprocess.run(
        [sys.executable, str(REPO / "mail_server.py")],
        cwd=tmp_path,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STATUS_STORE_URL", "nosuch://x"),
        ("EMAIL_LOG", "/nonexistent-dir/for/sure/email_log.txt"),
        ("STATUS_STORE_URL", "redis://127.0.0.1:noport/0"),
        ("SMTP_SECURITY", "plain"),
        ("PIN_CPUS", "maybe"),
        ("GC_TUNING", "2"),
    ],
)
def test_server_with_bad_setting_exits_with_one_line_naming_it(tmp_path, name, value):
    result = start_server(tmp_path, **{name: value})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert name in lines[0]
    assert "pw-123" not in result.stderr
    assert "k-123" not in result.stderr


def test_every_variable_is_in_the_contract():
    # docs/API.md is the contract: a setting the code reads and the contract does not name
    # is one a user cannot find.
    contract = (REPO / "docs" / "API.md").read_text(encoding="utf-8")
    missing = [name for name in config._VARIABLES if f"`{name}`" not in contract]
    assert missing == []


CELERY = {
    "DISPATCHER": "celery",
    "CELERY_BROKER_URL": "redis://127.0.0.1:6379/1",
    "STATUS_STORE_URL": "redis://127.0.0.1:6379/0",
}


def test_celery_dispatcher_settings_are_read():
    settings = settings_from_mapping({**CELERY, "DISPATCHER": "Celery"})
    assert settings.dispatcher == "celery"
    assert settings.celery_broker_url == "redis://127.0.0.1:6379/1"
    assert "6379/1" not in repr(settings)  # a broker URL may carry a password
    # The default time limit: the longest attempt by the SMTP time-outs, plus a minute.
    assert config.celery_time_limit(settings) == (8 + 50) * 30 + 600 + 30 + 60


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"CELERY_BROKER_URL": ""}, "CELERY_BROKER_URL"),
        ({"STATUS_STORE_URL": "memory://"}, "STATUS_STORE_URL=memory://"),
        ({"CELERY_TASK_TIME_LIMIT": "60", "CELERY_VISIBILITY_TIMEOUT": "60"}, "below"),
        ({"CELERY_VISIBILITY_TIMEOUT": "600"}, "CELERY_VISIBILITY_TIMEOUT"),
        ({"DISPATCHER": "rq"}, "DISPATCHER"),
    ],
)
def test_celery_dispatcher_refuses_what_cannot_work(change, named):
    with pytest.raises(ConfigError, match=named) as caught:
        settings_from_mapping({**CELERY, **change})
    assert "\n" not in str(caught.value)  # one line


def test_the_thread_dispatcher_needs_no_broker():
    assert settings_from_mapping({"STATUS_STORE_URL": "memory://"}).dispatcher == "thread"


def test_env_example_loads_as_it_is_shipped(clean_env: Path):
    # A copied .env.example is how users start: every value in it must be one we accept.
    (clean_env / ".env").write_text((REPO / ".env.example").read_text(encoding="utf-8"))
    settings = load_settings()
    assert settings.dispatcher == "thread"
    assert settings.celery_task_time_limit == 0 and settings.worker_metrics_port == 0


@pytest.mark.parametrize("name", ["CELERY_TASK_TIME_LIMIT", "WORKER_METRICS_PORT"])
def test_zero_turns_the_automatic_default_on(name):
    settings = settings_from_mapping({name: "0"})
    assert getattr(settings, name.lower()) == 0
