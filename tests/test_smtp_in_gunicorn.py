"""The SMTP listener under gunicorn: every worker binds SMTP_LISTEN with SO_REUSEPORT, the
kernel spreads the connections, and each worker accepts (its own pool sends); on SIGTERM the
listeners stop before the drain and gunicorn exits 0."""

from __future__ import annotations

import signal
import smtplib
from email.message import EmailMessage
from pathlib import Path

from mailservice.stores import store_from_url
from mailservice.testing.ports import free_port
from mailservice.testing.service_process import ServiceProcess, children
from tests.conftest import API_KEY, SENDER, wait_for
from tests.test_durability import service_env
from tests.test_smtp_in import QUEUED


def test_both_gunicorn_workers_accept_smtp_submissions(tmp_path: Path, smtp_server, redis_server):
    port = free_port()
    env = {
        **service_env(tmp_path, smtp_server.port, redis_server.url),
        "RATE_LIMIT_STORAGE_URL": redis_server.url,
        "GUNICORN_WORKERS": "2",
        "SMTP_LISTEN": f"127.0.0.1:{port}",
    }
    service = ServiceProcess(tmp_path, env, kind="gunicorn").start()
    store = store_from_url(redis_server.url, 3600)
    try:
        workers = set(children(service.process.pid))
        owners: set[str] = set()
        ids: list[str] = []

        def submit_one() -> set[str]:
            msg = EmailMessage()
            msg["From"], msg["To"], msg["Subject"] = SENDER, "you@example.org", "hi"
            msg.set_content("Hello")
            # A new connection each time, so the kernel may pick either worker.
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                smtp.login(SENDER, API_KEY)
                smtp.mail(SENDER)
                smtp.rcpt("you@example.org")
                code, reply = smtp.data(msg.as_bytes())
            assert code == 250, reply
            request_id = QUEUED.search(reply.decode()).group(1)
            ids.append(request_id)
            record = store.get(request_id)
            assert record is not None
            owners.add(record.owner)
            return owners if len(owners) >= 2 else set()

        wait_for(submit_one, timeout=30, interval=0)
        assert len(owners) == 2 and len(workers) == 2
        wait_for(lambda: len(smtp_server.received) == len(ids), timeout=20)
    finally:
        code = service.stop(signal.SIGTERM)
        store.close()
    assert code == 0, service.log_tail(40)
