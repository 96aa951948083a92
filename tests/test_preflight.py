"""Start-up checks of STATUS_STORE_URL and EMAIL_LOG (mailservice.preflight): a value no
process could open is refused, naming the variable, and nothing is connected to or created."""

from __future__ import annotations

import pytest

from mailservice.config import Settings
from mailservice.errors import ConfigError
from mailservice.preflight import check_email_log, check_named_resources, check_store_url
from mailservice.stores import store_from_url

GOOD_URLS = [
    "memory://",
    "MEMORY://",
    "memory://?max=10",
    "memory://?max=",
    "sqlite:///:memory:",
    "redis://127.0.0.1:1/0",  # nothing listens on port 1: checked, not connected to
    "rediss://:secret@cache.invalid:6380/2",
]
BAD_URLS = [
    "",
    "foo://x",
    "unix:///tmp/redis.sock",
    "memory://?max=x",
    "memory://?max=0",
    "memory://?max=-5",
    "sqlite://",
    "sqlite:///",
    "redis://127.0.0.1:noport/0",
    "redis://127.0.0.1:99999/0",
    "redis://127.0.0.1/0?socket_timeout=soon",
]


@pytest.mark.parametrize("url", GOOD_URLS)
def test_good_store_urls_pass(url):
    check_store_url(url)


@pytest.mark.parametrize("url", BAD_URLS)
def test_bad_store_urls_are_refused_naming_the_variable(url):
    with pytest.raises(ConfigError, match="STATUS_STORE_URL"):
        check_store_url(url)


@pytest.mark.parametrize(
    "url", ["memory://", "memory://?max=3", "memory://?max=", "memory://?max=x", "memory://?max=0",
            "foo://x", ""],
)  # fmt: skip
def test_check_agrees_with_the_registry(url):
    # The check parses as mailservice.stores does; for these, opening the store costs nothing.
    try:
        store_from_url(url, 60)
    except ConfigError:
        opens = False
    else:
        opens = True
    try:
        check_store_url(url)
    except ConfigError:
        passes = False
    else:
        passes = True
    assert passes == opens


def test_redis_url_password_is_not_in_the_message():
    with pytest.raises(ConfigError) as info:
        check_store_url("redis://:pw-123@127.0.0.1:noport/0")
    assert "pw-123" not in str(info.value)


def test_sqlite_folder_that_can_be_made_passes_and_is_not_made(tmp_path):
    check_store_url(f"sqlite:///{tmp_path}/new/deeper/status.db")
    assert list(tmp_path.iterdir()) == []


def test_sqlite_existing_file_passes_and_is_not_opened(tmp_path):
    (tmp_path / "status.db").write_bytes(b"")
    check_store_url(f"sqlite:///{tmp_path}/status.db")
    assert [p.name for p in tmp_path.iterdir()] == ["status.db"]  # no -wal, no -shm


def test_sqlite_relative_path_is_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check_store_url("sqlite:///status.db")
    (tmp_path / "data").write_text("a file\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="data is not a folder"):
        check_store_url("sqlite:///data/status.db")
    assert not (tmp_path / "status.db").exists()


def test_sqlite_under_a_file_is_refused(tmp_path):
    (tmp_path / "a-file").write_text("not a folder\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"STATUS_STORE_URL: cannot open SQLite file .*a-file"):
        check_store_url(f"sqlite:///{tmp_path}/a-file/deeper/status.db")


def test_sqlite_path_that_is_a_folder_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="is a folder"):
        check_store_url(f"sqlite:///{tmp_path}")


def test_email_log_in_an_existing_folder_passes_and_is_not_created(tmp_path):
    check_email_log(str(tmp_path / "email_log.txt"))
    assert list(tmp_path.iterdir()) == []


def test_email_log_in_a_missing_folder_is_refused_and_not_made(tmp_path):
    path = tmp_path / "missing" / "email_log.txt"
    with pytest.raises(ConfigError, match=r"^EMAIL_LOG=.* cannot be opened: folder .* does not"):
        check_email_log(str(path))
    assert not path.parent.exists()


@pytest.mark.parametrize("kind", ["empty", "folder", "under a file"])
def test_email_log_that_cannot_be_a_file_is_refused(tmp_path, kind):
    (tmp_path / "a-file").write_text("x\n", encoding="utf-8")
    path = {"empty": "", "folder": str(tmp_path), "under a file": str(tmp_path / "a-file" / "l")}
    with pytest.raises(ConfigError, match="EMAIL_LOG"):
        check_email_log(path[kind])


def test_check_named_resources_checks_both(tmp_path):
    check_named_resources(Settings(email_log=str(tmp_path / "log.txt")))
    with pytest.raises(ConfigError, match="STATUS_STORE_URL"):
        check_named_resources(Settings(status_store_url="foo://", email_log=str(tmp_path / "l")))
    with pytest.raises(ConfigError, match="EMAIL_LOG"):
        check_named_resources(Settings(email_log=str(tmp_path / "no" / "log.txt")))
