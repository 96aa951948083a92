"""The SMTP-in row (issue 17): `smtp-in`, messages submitted over SMTP to the service's own
listener (SMTP_LISTEN) instead of POSTed.

`python mail_server.py` with the memory store; 8 client threads (`--smtp-connections`), each
with one smtplib connection reused for all its messages (AUTH PLAIN once, on loopback without
TLS, then MAIL/RCPT/DATA per message), share `--messages` between them. `accepted_per_s` is
submissions answered `250 2.0.0 queued as <id>` per second over the burst, `delivered_per_s`
what the sink received per second, as in the throughput rows; p50/p99 are one transaction's
(MAIL to the 250 of DATA).
"""

from __future__ import annotations

import argparse
import smtplib
import threading
import time
from pathlib import Path

from bench.measure import per_second, wait_for_sink
from bench.report import RowResult
from bench.services import start_settled
from bench.sink import SinkProcess
from bench.workload import API_KEY, RECIPIENT, SENDER_EMAIL
from mailservice.testing.ports import free_port
from mailservice.testing.service_process import ServiceProcess

ROW = "smtp-in"
ROWS = (ROW,)
MESSAGE = (
    f"From: Bench <{SENDER_EMAIL}>\r\nTo: {RECIPIENT}\r\nSubject: Your receipt\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n\r\n" + "Thank you for your order.\r\n" * 20
).encode()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("smtp-in row")
    group.add_argument("--smtp-connections", type=int, default=8, help="reused connections (8)")


def submit(port: int, count: int, latencies: list[float], errors: list[str]) -> None:
    """`count` messages over one connection."""
    try:
        with smtplib.SMTP("127.0.0.1", port, local_hostname="bench.test", timeout=60) as smtp:
            smtp.login(SENDER_EMAIL, API_KEY)
            for _ in range(count):
                began = time.perf_counter()
                smtp.mail(SENDER_EMAIL)
                smtp.rcpt(RECIPIENT)
                code, reply = smtp.data(MESSAGE)
                if code != 250:
                    errors.append(f"{code} {reply.decode(errors='replace')}")
                    continue
                latencies.append(time.perf_counter() - began)
    except (OSError, smtplib.SMTPException) as exc:
        errors.append(repr(exc))


def smtp_in_row(
    args: argparse.Namespace, sink: SinkProcess, env: dict[str, str], rowdir: Path
) -> RowResult:
    """Run the row: see the module docstring."""
    row = RowResult(ROW, args.messages, accepted=0)
    port = free_port()
    sink.reset()
    service = ServiceProcess(rowdir, {**env, "SMTP_LISTEN": f"127.0.0.1:{port}"}, kind="plain")
    connections = max(1, min(args.smtp_connections, args.messages))
    shares = [args.messages // connections + (i < args.messages % connections)
              for i in range(connections)]  # fmt: skip
    latencies: list[float] = []
    errors: list[str] = []
    try:
        start_settled(service)
        began = time.time()  # the sink stamps its messages with time.time()
        threads = [threading.Thread(target=submit, args=(port, share, latencies, errors))
                   for share in shares]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        ended = time.time()
        row.accepted = len(latencies)
        row.accepted_per_s = per_second(row.accepted, began, ended)
        if latencies:
            ordered = sorted(latencies)
            row.p50_ms = ordered[len(ordered) // 2] * 1000
            row.p99_ms = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
        stats = wait_for_sink(sink, row.accepted, args.max_seconds, stall=10)
        row.delivered = stats.messages
        row.delivered_per_s = per_second(stats.messages, began, stats.last_message)
        row.smtp_sessions = stats.sessions
        if errors:
            row.notes.append(f"{len(errors)} submission error(s), first: {errors[0]}")
    except RuntimeError as exc:
        row.notes.append(f"failed: {exc}")
    finally:
        exit_code = service.stop()
    if exit_code:
        row.notes.append(f"exit code {exit_code} on SIGTERM")
        row.details["log_tail"] = service.log_tail(80)
    return row
