"""GET /metrics (API.md, "Metrics"): exact counts after real sends to a real aiosmtpd server,
the operator's token, and two gunicorn workers whose counts add up (multiprocess mode)."""

from __future__ import annotations

import http.client
import os
import signal
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from mailservice.testing.ports import free_port
from mailservice.testing.service_process import ServiceProcess, children
from mailservice.testing.smtp_servers import SmtpServer
from mailservice.testing.webhook_receiver import WebhookReceiver
from tests.conftest import API_KEY, send, wait_final, wait_for
from tests.test_durability import message, service_env
from tests.test_gunicorn import gunicorn_start_up

TOKEN = "admin-token-for-tests-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a text-format answer, by name and labels (the parser must take it)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 for a series not there yet (a counter never incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def scrape(client: FlaskClient) -> Samples:
    answer = client.get("/metrics", headers=ADMIN)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.content_type == "text/plain; version=0.0.4; charset=utf-8"
    return parse(answer.get_data(as_text=True))


def test_sends_refusals_and_retries_are_counted_exactly(
    make_app: Callable[..., Flask], smtp_server: SmtpServer
) -> None:
    app = make_app(
        smtp_server.port, admin_token=TOKEN, admin_email="admin@example.com", rate_limit="3/minute"
    )
    client = app.test_client()
    smtp_server.handler.script("DATA", "550 5.7.1 refused")
    refused = send(client).get_json()["request_id"]
    assert wait_final(client, refused)["status"] == "failed"
    wait_for(lambda: len(smtp_server.received) == 1)  # its ADMIN_EMAIL notice, sent
    smtp_server.handler.script("DATA", "451 4.3.0 try later")
    retried = wait_final(client, send(client).get_json()["request_id"])
    assert (retried["status"], retried["attempts"]) == ("sent", 2)
    assert wait_final(client, send(client).get_json()["request_id"])["status"] == "sent"
    assert send(client).status_code == 429  # the fourth within the minute
    assert send(client, key="not-a-key-0000000000").status_code == 401
    assert client.get(f"/email-status/{uuid.uuid4()}").status_code == 404
    assert client.get("/no/such/route").status_code == 404

    wait_for(lambda: value(scrape(client), "mail_requests_sent_total") == 3)  # notice included
    samples = scrape(client)
    assert value(samples, "mail_requests_accepted_total", route="/send-email") == 3
    assert value(samples, "mail_requests_accepted_total", route="failure-notice") == 1
    assert total(samples, "mail_requests_accepted_total") == 4
    assert total(samples, "mail_requests_failed_total") == 1
    assert value(samples, "mail_requests_failed_total", kind="permanent", reason="rejected") == 1
    assert value(samples, "mail_retries_total") == 1
    attempts = {o: value(samples, "mail_smtp_send_seconds_count", outcome=o) for o in OUTCOMES}
    assert attempts == {"sent": 3, "transient": 1, "permanent": 1}
    answers = {
        code: value(samples, "mail_http_responses_total", route="/send-email", method="POST",
                    status=code)
        for code in ("202", "429", "401")
    }  # fmt: skip
    assert answers == {"202": 3, "429": 1, "401": 1}
    send_route = {"route": "/send-email", "method": "POST"}
    assert value(samples, "mail_http_request_seconds_count", **send_route) == 5
    assert value(samples, "mail_http_request_seconds_bucket", **send_route, le="+Inf") == 5
    # The rule, never the path: one series for every id.
    status_route = {"route": "/email-status/<request_id>", "method": "GET"}
    assert value(samples, "mail_http_responses_total", **status_route, status="404") == 1
    unmatched = {"route": "<unmatched>", "method": "GET", "status": "404"}
    assert value(samples, "mail_http_responses_total", **unmatched) == 1
    assert not any("no/such" in str(labels) for _, labels in samples)
    assert value(samples, "mail_sending_threads") == 2  # WORKERS
    wait_for(lambda: value(scrape(client), "mail_queue_depth") == 0)


OUTCOMES = ("sent", "transient", "permanent")


def test_state_gauges_are_read_at_scrape_time(
    make_app: Callable[..., Flask], smtp_server: SmtpServer
) -> None:
    client = make_app(smtp_server.port, admin_token=TOKEN).test_client()
    smtp_server.handler.script("DATA", ("SLEEP", 5))  # an attempt under way for a while
    request_id = send(client).get_json()["request_id"]

    def sending() -> bool:
        samples = scrape(client)
        return (
            value(samples, "mail_sending_threads_busy") == 1
            and value(samples, "mail_queue_depth") == 1
            and value(samples, "mail_smtp_connections_open") == 1
            and value(samples, "mail_queue_bytes") > 0
        )

    wait_for(sending, timeout=4)
    assert wait_final(client, request_id)["status"] == "sent"
    samples = scrape(client)
    assert value(samples, "mail_sending_threads_busy") == 0
    assert value(samples, "mail_queue_depth") == value(samples, "mail_queue_bytes") == 0
    assert value(samples, "mail_smtp_connections_open") == 1  # kept for the next message


def test_each_final_status_has_its_counter() -> None:
    from dataclasses import replace

    from mailservice.events.bus import Finished
    from mailservice.events.metrics import DeliveryMetrics
    from mailservice.events.metrics_registry import MetricsRegistry
    from mailservice.stores.contract import EmailStatus, StatusRecord, utcnow

    registry = MetricsRegistry(multiprocess=False)
    metrics = DeliveryMetrics(registry, lambda error: "other")
    now = utcnow()
    record = StatusRecord("r", EmailStatus.SENT, "a@example.com", ("b@example.com",), (), now, now)
    for status, times in ((EmailStatus.EXPIRED, 2), (EmailStatus.CANCELED, 1)):
        for _ in range(times):
            metrics.on_event(Finished(replace(record, status=status, error="expired: 451")))
    metrics.on_event(Finished(record))
    samples = parse(registry.render().decode())
    assert value(samples, "mail_requests_expired_total") == 2
    assert value(samples, "mail_requests_canceled_total") == 1
    assert value(samples, "mail_requests_sent_total") == 1
    assert total(samples, "mail_requests_failed_total") == 0, "neither counts as failed"


def test_webhook_tries_are_counted_by_target_and_outcome(
    make_app: Callable[..., Flask], smtp_server: SmtpServer
) -> None:
    secret = "whk-test-secret-0123456789"
    deployment = WebhookReceiver(secret, answers=[503, 503]).start()
    own = WebhookReceiver(secret, then=500).start()  # never a 2xx: its 6 tries run out
    try:
        client = make_app(
            smtp_server.port, admin_token=TOKEN, webhook_secret=secret, webhook_allow_private=True,
            webhook_timeout=2.0, webhook_backoff=0.02, webhook_url=deployment.url(),
        ).test_client()  # fmt: skip
        body = {"recipient": "user@example.com", "subject": "Hi", "body": "x"}
        request_id = send(client, {**body, "callback_url": own.url()}).get_json()["request_id"]
        wait_for(
            lambda: client.get(f"/email-status/{request_id}").get_json()["webhook"] == "failed"
        )
        samples = scrape(client)
    finally:
        deployment.stop()
        own.stop()
    tries = {
        (dict(labels)["target"], dict(labels)["outcome"]): v
        for (name, labels), v in samples.items()
        if name == "mail_webhook_tries_total"
    }
    assert tries == {
        ("WEBHOOK_URL", "retrying"): 2,
        ("WEBHOOK_URL", "delivered"): 1,
        ("callback_url", "retrying"): 5,
        ("callback_url", "failed"): 1,
    }


def test_metrics_need_the_admin_token(
    make_app: Callable[..., Flask], smtp_server: SmtpServer
) -> None:
    closed = make_app(smtp_server.port).test_client()  # ADMIN_TOKEN unset
    answer = closed.get("/metrics", headers={"Authorization": "Bearer "})
    assert answer.status_code == 401
    assert "ADMIN_TOKEN is not set" in answer.get_json()["detail"]

    client = make_app(smtp_server.port, admin_token=TOKEN, auth_fail_limit="3/minute").test_client()
    for headers in ({}, {"Authorization": f"Bearer {API_KEY}"}):  # a sender's key is no token
        answer = client.get("/metrics", headers=headers)
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"] == 'Bearer realm="admin"'
        assert answer.mimetype == "application/problem+json"
        assert b"mail_" not in answer.data
    assert client.get("/metrics", headers=ADMIN).status_code == 200
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    # Three refusals from this address: AUTH_FAIL_LIMIT, the right token included.
    assert client.get("/metrics", headers=ADMIN).status_code == 429


# -- several gunicorn workers: prometheus-client's multiprocess mode ---------------------------


def scrape_http(service: ServiceProcess) -> Samples:
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
    try:
        conn.request("GET", "/metrics", headers=ADMIN)
        answer = conn.getresponse()
        text = answer.read().decode()
    finally:
        conn.close()
    assert answer.status == 200, text
    return parse(text)


def file_value(path: Path, name: str) -> float:
    """The sum of one metric's samples in one process's file."""
    return sum(
        s.value
        for metric in MultiProcessCollector.merge([str(path)])
        for s in metric.samples
        if s.name == name
    )


def plant_stale_files(folder: Path) -> None:
    """What an earlier run would leave: 1000 sends and a queue of 50, from pids long gone."""
    counts = MmapedDict(str(folder / "counter_999999.db"))
    counts.write_value(
        mmap_key("mail_requests_sent", "mail_requests_sent_total", [], [], "stale"), 1000.0, 0.0
    )
    counts.close()
    gauges = MmapedDict(str(folder / "gauge_livesum_999998.db"))
    gauges.write_value(mmap_key("mail_queue_depth", "mail_queue_depth", [], [], "x"), 50.0, 0.0)
    gauges.close()
    (folder / "notes.txt").write_text("the operator's own", encoding="utf-8")


def test_two_gunicorn_workers_add_up_to_what_was_sent(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    folder = tmp_path / "metrics"
    folder.mkdir()
    plant_stale_files(folder)
    env = {
        **service_env(tmp_path, smtp_server.port, "memory://", WORKERS="3"),
        "GUNICORN_WORKERS": "2",
        "ADMIN_TOKEN": TOKEN,
        "PROMETHEUS_MULTIPROC_DIR": str(folder),
    }
    service = ServiceProcess(tmp_path, env, kind="gunicorn").start()
    try:
        assert sorted(p.name for p in folder.glob("*_99999?.db")) == []  # an earlier run's
        assert (folder / "notes.txt").exists()  # not a metrics file: kept
        workers = children(service.pids()[0])
        # start() returns once one worker answers; each makes its files as it builds its app.
        wait_for(lambda: all((folder / f"counter_{pid}.db").exists() for pid in workers), 20)
        accepted = "mail_requests_accepted_total"

        def post(i: int) -> None:
            status, _, _ = service.request("POST", "/send-email", message(i), {
                "Authorization": f"Bearer {API_KEY}"})  # fmt: skip
            assert status == 202

        sent = 0
        with ThreadPoolExecutor(8) as clients:
            # Concurrent connections, in rounds, until each worker has accepted some.
            while sent < 160:
                list(clients.map(post, range(sent, sent + 16)))
                sent += 16
                by_worker = [file_value(folder / f"counter_{pid}.db", accepted) for pid in workers]
                if all(by_worker):
                    break
        assert all(by_worker) and sum(by_worker) == sent, by_worker
        wait_for(lambda: value(scrape_http(service), "mail_requests_sent_total") == sent, 30)
        assert len(smtp_server.received) == sent
        samples = scrape_http(service)
        assert value(samples, accepted, route="/send-email") == sent
        answers = {"route": "/send-email", "method": "POST", "status": "202"}
        assert value(samples, "mail_http_responses_total", **answers) == sent
        assert value(samples, "mail_smtp_send_seconds_count", outcome="sent") == sent
        assert value(samples, "mail_sending_threads") == 6  # livesum: 3 threads, 2 workers
        wait_for(lambda: value(scrape_http(service), "mail_queue_depth") == 0)

        # A worker that dies: its counts stay, its state gauges leave the sums (child_exit).
        dead = workers[0]
        os.kill(dead, signal.SIGKILL)
        wait_for(lambda: not (folder / f"gauge_livesum_{dead}.db").exists(), 20)
        wait_for(lambda: len(set(children(service.pids()[0])) - {dead}) == 2, 20)
        wait_for(lambda: value(scrape_http(service), "mail_sending_threads") == 6, 20)
        assert value(scrape_http(service), "mail_requests_sent_total") == sent
    finally:
        code = service.stop()
    assert code == 0, service.log_tail(40)


def test_gunicorn_without_the_variable_uses_a_temporary_folder_and_removes_it(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {
        **service_env(tmp_path, smtp_server.port, "memory://"),
        "GUNICORN_WORKERS": "1",
        "ADMIN_TOKEN": TOKEN,
        "TMPDIR": str(temp),  # where tempfile.mkdtemp() makes it
    }
    service = ServiceProcess(tmp_path, env, kind="gunicorn")
    service.env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # not inherited from this process either
    service.start()
    try:
        [folder] = temp.glob("mail-service-metrics-*")
        status, _, _ = service.request("POST", "/send-email", message(0), {
            "Authorization": f"Bearer {API_KEY}"})  # fmt: skip
        assert status == 202
        wait_for(lambda: value(scrape_http(service), "mail_requests_sent_total") == 1)
        assert list(folder.glob("counter_*.db"))
    finally:
        code = service.stop()
    assert code == 0, service.log_tail(40)
    assert not folder.exists()


@pytest.mark.parametrize("configured", [False, True], ids=["temporary", "configured"])
def test_a_gunicorn_reload_keeps_the_metrics_folder_and_its_counts(
    tmp_path: Path, smtp_server: SmtpServer, configured: bool
) -> None:
    # SIGHUP runs gunicorn.conf.py again, with PROMETHEUS_MULTIPROC_DIR set by the first run.
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {
        **service_env(tmp_path, smtp_server.port, "memory://"),
        "GUNICORN_WORKERS": "1",
        "ADMIN_TOKEN": TOKEN,
        "TMPDIR": str(temp),
    }
    if configured:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "metrics")
    service = ServiceProcess(tmp_path, env, kind="gunicorn")
    if not configured:
        service.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    service.start()
    headers = {"Authorization": f"Bearer {API_KEY}"}
    try:
        [folder] = [tmp_path / "metrics"] if configured else temp.glob("mail-service-metrics-*")
        for i in range(2):
            assert service.request("POST", "/send-email", message(i), headers)[0] == 202
        wait_for(lambda: value(scrape_http(service), "mail_requests_sent_total") == 2)
        master, old = service.pids()[0], set(service.pids()[1:])
        os.kill(master, signal.SIGHUP)
        # The old worker drains and goes; a new one, forked after the reload, serves.
        wait_for(lambda: (now := set(children(master))) and not now & old, 30)
        assert "Hang up" in service.output
        assert list(temp.glob("mail-service-metrics-*")) == ([] if configured else [folder])
        wait_for(lambda: value(scrape_http(service), "mail_requests_sent_total") == 2, 20)
        assert service.request("POST", "/send-email", message(2), headers)[0] == 202
        wait_for(lambda: value(scrape_http(service), "mail_requests_sent_total") == 3)
        samples = scrape_http(service)
        assert value(samples, "mail_requests_accepted_total", route="/send-email") == 3
        assert len(smtp_server.received) == 3
    finally:
        code = service.stop()
    assert code == 0, service.log_tail(40)
    assert folder.exists() is configured  # a temporary folder goes with the master


def test_gunicorn_refuses_a_metrics_folder_holding_another_db_file(tmp_path: Path) -> None:
    # prometheus-client would read status.db as one of its files, and every scrape would fail.
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "status.db").write_bytes(b"SQLite format 3\x00")
    env = {
        **service_env(tmp_path, free_port(), "memory://"),
        "PROMETHEUS_MULTIPROC_DIR": str(folder),
    }
    code, output = gunicorn_start_up(tmp_path, env)
    assert code == 2, output
    assert output.strip() == (
        f"mail_server: configuration error: PROMETHEUS_MULTIPROC_DIR={str(folder)!r} holds "
        "status.db, which is not a metrics file: give prometheus-client a folder of its own"
    )
    assert (folder / "status.db").exists()
