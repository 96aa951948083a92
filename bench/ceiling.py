"""The ceiling: plain smtplib sending the bench's messages, no HTTP and no store.

`python -m bench.ceiling --port N --messages M --workers W` builds every message with the
service's own code path (`wire_bytes(message.build_message(...))`, as `WorkerPool` does for each
request) inside W threads, each sending over one reused smtplib connection to the sink, and
prints one JSON line: when the first send started (time.time()), the messages sent, and the
process's CPU seconds and peak RSS. `run_ceiling()` runs it as a child process so that its CPU
and memory are its own.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import smtplib
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def send_all(port: int, messages: int, workers: int) -> dict[str, Any]:
    """Send `messages` messages over `workers` reused connections; the figures as a dict."""
    sys.path.insert(0, str(ROOT))
    from bench.workload import SEND_BODY, SENDER_EMAIL
    from mailservice.api.request_path import message_spec
    from mailservice.api.schemas import SendRequest
    from mailservice.delivery.message import build_message, wire_bytes
    from mailservice.senders import Sender
    from mailservice.stores.contract import utcnow

    request = message_spec(SendRequest.model_validate(SEND_BODY))  # what the pool builds from
    sender = Sender(SENDER_EMAIL, "", "127.0.0.1", port, "none", "Bench")
    recipients = request.recipients
    tickets = itertools.count()  # next() on itertools.count is atomic under the GIL
    sent = [0] * workers
    failures: list[str] = []
    connections = [smtplib.SMTP("127.0.0.1", port, timeout=30) for _ in range(workers)]
    for conn in connections:
        conn.ehlo()

    def worker(index: int) -> None:
        conn = connections[index]
        try:
            while next(tickets) < messages:
                msg = build_message(request, sender, str(uuid.uuid4()), utcnow())
                data = wire_bytes(msg)
                options = ["SMTPUTF8", "BODY=8BITMIME"] if msg.policy.utf8 else []
                conn.sendmail(sender.email, recipients, data, options)
                sent[index] += 1
        except (OSError, smtplib.SMTPException) as exc:
            failures.append(f"{type(exc).__name__}: {exc}")

    cpu_before = os.times()
    start = time.time()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    end = time.time()
    cpu_after = os.times()
    for conn in connections:
        try:
            conn.quit()
        except (OSError, smtplib.SMTPException):
            conn.close()
    cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    return {
        "start": start,
        "end": end,
        "sent": sum(sent),
        "failures": failures[:5],
        "cpu_seconds": cpu,
        "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def run_ceiling(port: int, messages: int, workers: int, timeout: float) -> dict[str, Any]:
    """Run the ceiling in a child process; its JSON figures."""
    cmd = [
        sys.executable, "-m", "bench.ceiling",
        "--port", str(port), "--messages", str(messages), "--workers", str(workers),
    ]  # fmt: skip
    result = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"the ceiling run failed:\n{result.stderr[-2000:]}")
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="plain smtplib over reused connections")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--messages", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    args = parser.parse_args(argv)
    print(json.dumps(send_all(args.port, args.messages, args.workers)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
