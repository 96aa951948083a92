"""The senders file and API keys (API.md section 2), and start-up failing on a bad one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mailservice.config import Settings
from mailservice.errors import ConfigError
from mailservice.senders import Sender, SenderDirectory, load_senders
from mailservice.testing.ports import free_port

REPO = Path(__file__).resolve().parent.parent
KEY = "key-abcdef-123456"
PASSWORD = "app-password-xyz"


def write(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load(path: Path, **settings) -> SenderDirectory:
    return load_senders(Settings(senders_file=str(path), **settings))


def test_seed_format_file_is_loaded_with_defaults_from_settings(tmp_path):
    path = write(tmp_path, f"key,email,app_password\n{KEY},me@example.com,{PASSWORD}\n")
    directory = load(path, smtp_host="smtp.example.net", smtp_port=2525, smtp_security="ssl")
    assert len(directory) == 1
    sender = directory.authenticate(KEY)
    assert sender == Sender(
        email="me@example.com",
        password=PASSWORD,
        smtp_host="smtp.example.net",
        smtp_port=2525,
        smtp_security="ssl",
        name="",
    )
    assert sender.domain == "example.com"


def test_optional_columns_are_honoured(tmp_path):
    path = write(
        tmp_path,
        "key,email,app_password,smtp_host,smtp_port,smtp_security,name\n"
        f"{KEY},me@example.com,{PASSWORD},mail.example.org,465,SSL,Me Myself\n"
        "key-2,you@example.com,pw2,,,,\n",
    )
    directory = load(path)
    me = directory.authenticate(KEY)
    assert me is not None
    assert (me.smtp_host, me.smtp_port, me.smtp_security, me.name) == (
        "mail.example.org",
        465,
        "ssl",
        "Me Myself",
    )
    you = directory.authenticate("key-2")
    assert you is not None
    assert (you.smtp_host, you.smtp_port, you.smtp_security, you.name) == (
        "smtp.gmail.com",
        587,
        "starttls",
        "",
    )


def test_columns_in_any_order_with_bom_and_blank_lines(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(
        "\ufeffemail, app_password ,key\r\nme@example.com,pw,k1\r\n\r\n,,\r\n".encode()
    )
    directory = load(path)
    assert len(directory) == 1
    assert directory.authenticate("k1").email == "me@example.com"


def test_by_email_finds_the_sender_case_insensitively(tmp_path):
    path = write(tmp_path, f"key,email,app_password\n{KEY},Me@Example.com,pw\n")
    directory = load(path)
    assert directory.by_email("me@example.com") is directory.authenticate(KEY)
    assert directory.by_email("nobody@example.com") is None


BAD_FILES = {
    "empty_file": "",
    "header_only": "key,email,app_password\n",
    "missing_column": f"key,email\n{KEY},me@example.com\n",
    "no_header": f"{KEY},me@example.com,{PASSWORD}\n",
    "bad_email": f"key,email,app_password\n{KEY},not-an-email,{PASSWORD}\n",
    "email_list": f'key,email,app_password\n{KEY},"a@example.com, b@example.com",pw\n',
    "empty_key": f"key,email,app_password\n,me@example.com,{PASSWORD}\n",
    "bad_port": f"key,email,app_password,smtp_port\n{KEY},me@example.com,pw,abc\n",
    "port_out_of_range": f"key,email,app_password,smtp_port\n{KEY},me@example.com,pw,70000\n",
    "port_zero": f"key,email,app_password,smtp_port\n{KEY},me@example.com,pw,0\n",
    "bad_security": f"key,email,app_password,smtp_security\n{KEY},me@example.com,pw,tls\n",
    "duplicate_key": f"key,email,app_password\n{KEY},a@example.com,pw\n{KEY},b@example.com,pw\n",
}


@pytest.mark.parametrize("text", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_bad_senders_file_raises_config_error_naming_the_file(tmp_path, text):
    path = write(tmp_path, text, name="my-senders.csv")
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert str(path) in message
    assert KEY not in message
    assert PASSWORD not in message


def test_missing_file_raises_config_error_naming_the_file(tmp_path):
    path = tmp_path / "nowhere.csv"
    with pytest.raises(ConfigError, match=r"nowhere\.csv"):
        load(path)


def test_non_utf8_file_raises_config_error_naming_the_file(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(b"key,email,app_password\nk\xe9y,me@example.com,pw\n")
    with pytest.raises(ConfigError, match=r"latin\.csv"):
        load(path)


def test_a_directory_instead_of_a_file_raises_config_error(tmp_path):
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path))):
        load(tmp_path)


def test_bad_row_is_named_by_line_number(tmp_path):
    path = write(
        tmp_path, f"key,email,app_password\nk1,a@example.com,pw\nk2,not-an-email,{PASSWORD}\n"
    )
    with pytest.raises(ConfigError, match="line 3"):
        load(path)


# -- authenticate -------------------------------------------------------------------------------


@pytest.fixture
def directory(tmp_path) -> SenderDirectory:
    path = write(
        tmp_path,
        f"key,email,app_password\n{KEY},me@example.com,{PASSWORD}\nkey-2,you@example.com,pw2\n",
    )
    return load(path)


def test_authenticate_returns_the_sender_of_the_key(directory):
    assert directory.authenticate(KEY).email == "me@example.com"
    assert directory.authenticate("key-2").email == "you@example.com"


@pytest.mark.parametrize(
    "key",
    [None, "", "wrong", KEY[:-1], KEY + "x", KEY.upper(), f" {KEY}", "\ud800", PASSWORD],
    ids=["none", "empty", "wrong", "prefix", "longer", "upper", "space", "surrogate", "password"],
)
def test_authenticate_refuses_wrong_empty_and_none(directory, key):
    assert directory.authenticate(key) is None


def test_repr_never_shows_a_password_or_key(directory):
    sender = directory.authenticate(KEY)
    for text in (repr(sender), str(sender), repr(directory), str(directory)):
        assert PASSWORD not in text
        assert KEY not in text
    assert "me@example.com" in repr(sender)


def test_directory_needs_unique_keys():
    sender = Sender("a@example.com", "pw", "127.0.0.1", 25, "none")
    with pytest.raises(ConfigError):
        SenderDirectory([(KEY, sender), (KEY, sender)])


# -- start-up -------------------------------------------------------------------------------------


def service_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMTP_", "STATUS_"))}
    env.update({"PYTHONDONTWRITEBYTECODE": "1", **extra})
    return env


def test_server_with_missing_senders_file_exits_with_one_line(tmp_path):
    missing = tmp_path / "missing-senders.csv"
    # The process must exit by itself rather than serve or hang: run() raises TimeoutExpired
    # past its deadline (a bound, not a measurement).
    result = subprocess.run(
        [sys.executable, str(REPO / "mail_server.py")],
        cwd=tmp_path,
        env=service_env(SENDERS_FILE=str(missing), PORT=str(free_port())),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "missing-senders.csv" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_server_with_bad_variable_exits_with_one_line_naming_it(tmp_path):
    write(tmp_path, f"key,email,app_password\n{KEY},me@example.com,{PASSWORD}\n")
    result = subprocess.run(
        [sys.executable, str(REPO / "mail_server.py")],
        cwd=tmp_path,
        env=service_env(SENDERS_FILE="data.csv", PORT=str(free_port()), WORKERS="zero"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "WORKERS" in lines[0]
    assert "Traceback" not in result.stderr
    assert PASSWORD not in result.stderr + result.stdout


# -- special-use domains -----------------------------------------------------------------------


def test_senders_on_special_use_domains_load(tmp_path):
    # Internal relays use them; the operator chose the sender (recipients stay strict: API.md).
    path = write(
        tmp_path,
        "key,email,app_password\n"
        f"{KEY},alerts@relay.internal,{PASSWORD}\n"
        "key-2,Ops@Mail.LOCAL,pw\n"
        "key-3,ci@runner.test,pw\n"
        "key-4,cron@localhost,pw\n",
    )
    directory = load(path)
    emails = [directory.authenticate(k).email for k in (KEY, "key-2", "key-3", "key-4")]
    assert emails == ["alerts@relay.internal", "Ops@mail.local", "ci@runner.test", "cron@localhost"]
    assert directory.authenticate("key-2").is_address("Ops@MAIL.local")


@pytest.mark.parametrize("email", ["bad@-x.local", "two@@relay.local", "dots@relay..local"])
def test_a_malformed_address_on_a_special_use_domain_still_stops_start_up(tmp_path, email):
    path = write(tmp_path, f"key,email,app_password\n{KEY},{email},{PASSWORD}\n")
    with pytest.raises(ConfigError, match="not a valid address"):
        load(path)


# -- the account's protection columns (issue 16) ----------------------------------------------


def test_rate_daily_limit_and_a_second_server_are_read(tmp_path):
    from mailservice.senders import Rate

    path = write(
        tmp_path,
        "key,email,app_password,smtp_host,smtp_port,rate,daily_limit,smtp_host2,smtp_port2\n"
        f"{KEY},Me@Example.com,{PASSWORD},smtp.a.test,587,14/second,2000/day,smtp.b.test,2525\n"
        "key-2,you@example.com,pw2,smtp.a.test,587,600/minutes,500,smtp.c.test,\n"
        "key-3,them@example.com,pw3,,,,,,\n",
    )
    directory = load(path)
    me, you, them = (directory.authenticate(k) for k in (KEY, "key-2", "key-3"))
    assert me is not None and you is not None and them is not None
    assert (me.rate, me.daily_limit, me.smtp_host2, me.smtp_port2) == (
        Rate(14, 1.0), 2000, "smtp.b.test", 2525,
    )  # fmt: skip
    assert str(me.rate) == "14/second" and me.account == "me@example.com"
    assert (you.rate, you.daily_limit, you.smtp_port2) == (Rate(600, 60.0), 500, 587)
    assert (them.rate, them.daily_limit, them.smtp_host2, them.smtp_port2) == (None, None, "", 0)


def test_credentials_json_carries_the_same_protection(tmp_path):
    path = write(
        tmp_path,
        '{"user": "me@example.com", "password": "pw", "smtp_host": "smtp.a.test", '
        '"smtp_port": 465, "rate": "1/second", "daily_limit": 50, "smtp_host2": "smtp.b.test"}',
        name="credentials.json",
    )
    sender = load(path, credentials_key=KEY).authenticate(KEY)
    assert sender is not None
    assert (str(sender.rate), sender.daily_limit, sender.smtp_host2, sender.smtp_port2) == (
        "1/second", 50, "smtp.b.test", 465,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("column", "value", "says"),
    [
        ("rate", "14", "is not a rate"),
        ("rate", "14/fortnight", "is not a rate"),
        ("rate", "0/second", "at least 1"),
        ("daily_limit", "many", "is not a count"),
        ("daily_limit", "14/second", "a count a day"),
        ("smtp_port2", "99999", "out of range"),
    ],
)
def test_a_bad_protection_column_stops_start_up_naming_it(tmp_path, column, value, says):
    host2 = "smtp.b.test" if column == "smtp_port2" else ""
    path = write(
        tmp_path,
        f"key,email,app_password,smtp_host2,{column}\n{KEY},me@example.com,pw,{host2},{value}\n",
    )
    with pytest.raises(ConfigError, match=rf"line 2: {column} .*{says}|{says}"):
        load(path)


def test_a_second_port_without_a_second_host_is_refused(tmp_path):
    path = write(tmp_path, f"key,email,app_password,smtp_port2\n{KEY},me@example.com,pw,2525\n")
    with pytest.raises(ConfigError, match="smtp_port2 without smtp_host2"):
        load(path)
