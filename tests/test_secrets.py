"""Keys and passwords never reach an answer or a log line."""

from __future__ import annotations

from mailservice.testing.service_process import ServiceProcess
from tests.conftest import API_KEY
from tests.test_durability import message, service_env


def test_access_log_never_shows_a_key_given_in_the_url(tmp_path, smtp_server):
    env = service_env(tmp_path, smtp_server.port, "memory://")
    process = ServiceProcess(tmp_path, env).start()
    try:
        status, _, body = process.request(
            "POST", f"/send-email?key={API_KEY}", message(1), {"Content-Type": "application/json"}
        )
        assert status == 400
        assert API_KEY not in str(body)
    finally:
        assert process.stop() == 0
    assert "/send-email" in process.output
    assert API_KEY not in process.output
