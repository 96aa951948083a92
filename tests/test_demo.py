"""Black box: `python mail_server.py --demo` over real sockets, from banner to SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest

from mailservice.testing.ports import free_port
from tests.conftest import wait_for

REPO = Path(__file__).resolve().parent.parent


@dataclass
class DemoProcess:
    proc: subprocess.Popen[bytes]
    workdir: Path
    base_url: str
    stdout: Path
    stderr: Path

    def banner_key(self) -> str:
        def key() -> str | None:
            match = re.search(r"Demo API key: (\S+)", self.stdout.read_text(encoding="utf-8"))
            assert self.proc.poll() is None, self.stderr.read_text(encoding="utf-8")
            return match[1] if match else None

        return wait_for(key, timeout=15)

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, key: str = ""
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        if body is not None:
            request.add_header("Content-Type", "application/json")
        if key:
            request.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, dict(response.headers), json.loads(response.read())
        except urllib.error.HTTPError as error:
            with error:
                return error.code, dict(error.headers), json.loads(error.read())


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[DemoProcess]:
    port, smtp_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMTP_", "STATUS_"))}
    env.update(
        {
            "PORT": str(port),
            "SMTP_PORT": str(smtp_port),
            "HOST": "127.0.0.1",
            "DRAIN_SECONDS": "5",
            # its SMTP listener on a free port, not the default 2525 another run may hold
            "SMTP_LISTEN": f"127.0.0.1:{free_port()}",
        }
    )
    stdout, stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "mail_server.py"), "--demo"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=err,
        )
    demo = DemoProcess(proc, tmp_path, f"http://127.0.0.1:{port}", stdout, stderr)
    try:
        yield demo
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def listening(demo: DemoProcess) -> bool:
    try:
        status, _, _ = demo.request("GET", "/healthz")
    except OSError:
        return False
    return status == 200


def test_demo_sends_to_the_outbox_and_stops_cleanly_on_sigterm(demo: DemoProcess):
    key = demo.banner_key()
    wait_for(lambda: listening(demo), timeout=15)

    status, headers, body = demo.request(
        "POST",
        "/send-email",
        {"recipient": "you@example.com", "subject": "Hello from the demo", "body": "It works."},
        key=key,
    )
    assert status == 202, body
    request_id = body["request_id"]
    assert headers["Location"] == f"/email-status/{request_id}"

    outbox = demo.workdir / "outbox"
    [eml] = wait_for(lambda: list(outbox.glob("*.eml")) if outbox.exists() else None, timeout=15)
    message = message_from_bytes(eml.read_bytes(), policy=policy.default)
    assert message["Subject"] == "Hello from the demo"
    assert message["Message-ID"] == f"<{request_id}@example.com>"

    final = wait_for(
        lambda: (
            (s := demo.request("GET", f"/email-status/{request_id}")[2])["status"] == "sent" and s
        ),
        timeout=15,
    )
    assert final["attempts"] == 1

    log_path = demo.workdir / "email_log.txt"
    log = wait_for(lambda: (t := log_path.read_text(encoding="utf-8")).count(request_id) == 2 and t)
    assert f"Request ID: {request_id}, Sender: demo@example.com" in log
    assert log.rstrip("\n").endswith("Status: sent")
    assert key not in log

    # The dashboard shows the outbox, to the admin token the banner printed.
    banner = demo.stdout.read_text(encoding="utf-8")
    assert f"Dashboard: {demo.base_url}/" in banner
    token = re.search(r"Demo admin token: (\S+)", banner)[1]  # type: ignore[index]
    page = urllib.request.Request(
        demo.base_url + "/dashboard/outbox", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(page, timeout=5) as answer:
        assert f"/dashboard/outbox/{eml.name}" in answer.read().decode()

    demo.proc.send_signal(signal.SIGTERM)
    assert demo.proc.wait(timeout=15) == 0
    assert "Traceback" not in demo.stderr.read_text(encoding="utf-8")


def test_demo_refuses_a_request_without_the_key(demo: DemoProcess):
    demo.banner_key()
    wait_for(lambda: listening(demo), timeout=15)
    status, headers, body = demo.request(
        "POST", "/send-email", {"recipient": "you@example.com", "subject": "x", "body": "x"}
    )
    assert status == 401
    assert headers["Content-Type"].startswith("application/problem+json")
    assert body["status"] == 401
    demo.proc.send_signal(signal.SIGINT)
    assert demo.proc.wait(timeout=15) == 0


def test_demo_with_smtp_port_in_use_exits_with_one_line(tmp_path: Path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        smtp_port = busy.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SMTP_", "STATUS_"))}
        env.update({"PORT": str(free_port()), "SMTP_PORT": str(smtp_port)})
        result = subprocess.run(
            [sys.executable, str(REPO / "mail_server.py"), "--demo"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "SMTP_PORT" in lines[0]
    assert str(smtp_port) in lines[0]


def test_demo_makes_up_a_webhook_secret_and_callbacks_reach_this_machine(demo: DemoProcess):
    from mailservice.testing.webhook_receiver import WebhookReceiver

    key = demo.banner_key()
    match = re.search(r"Demo webhook secret: (\S+)", demo.stdout.read_text(encoding="utf-8"))
    assert match, "the banner prints the secret it made up"
    receiver = WebhookReceiver(match[1]).start()
    try:
        wait_for(lambda: listening(demo), timeout=15)
        status, _, body = demo.request(
            "POST",
            "/send-email",
            {"recipient": "you@example.com", "subject": "Hi", "body": "x",
             "callback_url": receiver.url()},
            key=key,
        )  # fmt: skip
        assert status == 202, body
        wait_for(lambda: receiver.hits, timeout=15)
        assert receiver.hits[0].signed, "signed with the secret the banner shows"
        assert receiver.hits[0].json["request_id"] == body["request_id"]
    finally:
        receiver.stop()
    demo.proc.send_signal(signal.SIGTERM)
    assert demo.proc.wait(timeout=15) == 0


def test_demo_secrets_are_made_up_only_where_none_is_set():
    from mailservice.config import Settings
    from mailservice.demo import demo_secrets

    made, lines = demo_secrets(Settings())
    assert made.webhook_secret and made.admin_token and made.admin_token != made.webhook_secret
    assert lines == [
        f"Demo webhook secret: {made.webhook_secret}",
        f"Demo admin token: {made.admin_token}",
    ]
    kept, none = demo_secrets(Settings(webhook_secret="mine", admin_token="ours"))
    assert (kept.webhook_secret, kept.admin_token, none) == ("mine", "ours", [])
