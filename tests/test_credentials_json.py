"""Senders sources: seed 000's credentials.json (SENDERS_FILE ending in .json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mailservice.config import Settings
from mailservice.errors import ConfigError
from mailservice.senders import load_senders

SEED_000 = {
    "smtp_host": "smtp.gmail.com",
    "smtp_port": 587,
    "user": "me@gmail.com",
    "password": "pw",
}


def credentials(tmp_path: Path, content: object) -> str:
    path = tmp_path / "credentials.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content), "utf-8")
    return str(path)


def test_credentials_json_is_one_sender_under_credentials_key(tmp_path):
    settings = Settings(senders_file=credentials(tmp_path, SEED_000), credentials_key="k-123")
    senders = load_senders(settings)
    assert len(senders) == 1
    sender = senders.authenticate("k-123")
    assert sender is not None
    assert (sender.email, sender.smtp_host, sender.smtp_port) == (
        "me@gmail.com",
        "smtp.gmail.com",
        587,
    )
    assert sender.smtp_security == "starttls"
    assert senders.authenticate("pw") is None  # the SMTP password is not an API key


def test_credentials_json_on_port_465_uses_implicit_tls(tmp_path):
    path = credentials(tmp_path, {**SEED_000, "smtp_port": 465})
    sender = load_senders(Settings(senders_file=path, credentials_key="k")).authenticate("k")
    assert sender is not None and sender.smtp_security == "ssl"


def test_credentials_json_without_credentials_key_names_the_variable(tmp_path):
    with pytest.raises(ConfigError, match="CREDENTIALS_KEY"):
        load_senders(Settings(senders_file=credentials(tmp_path, SEED_000)))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ([SEED_000], "one JSON object"),
        ({**SEED_000, "pasword": "x"}, "unknown field"),
        ({**SEED_000, "user": ""}, "user"),
        ({**SEED_000, "smtp_port": 70000}, "smtp_port"),
        ({**SEED_000, "user": "not an address"}, "not a valid address"),
    ],
)
def test_malformed_credentials_json_names_the_file(tmp_path, content, message):
    path = credentials(tmp_path, content)
    with pytest.raises(ConfigError, match=message) as raised:
        load_senders(Settings(senders_file=path, credentials_key="k"))
    assert "credentials.json" in str(raised.value)
    assert "pw" not in str(raised.value).replace(str(tmp_path), "")
