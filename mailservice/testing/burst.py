"""A burst of sends spread over several API processes, and who arrived at the sink, for the
scale-out tests.

`Burst(ports, key, total)` sends `total` requests from a few client threads, each on one
keep-alive http.client connection to one of `ports` (thread i to port i modulo their number),
as single `POST /send-email` requests and, for a share of them, `POST /send-email/batch`. The
work is a fixed list taken from a shared queue, so the burst is bounded in count, and each
thread also stops at `deadline`, so it is bounded in time. A request is never sent twice (a
retried POST could record a second request the test would not know of): a connection error is
written down and the thread goes on with a new connection. `accepted` lists the request ids of
202 answers as they come, for a test that acts in the middle of a burst.

`arrived(received)` reads the Message-IDs of what an SMTP sink received: the service's rule is
`<request_id@sender's domain>` (delivery/message.py), so each names its request.
"""

from __future__ import annotations

import http.client
import json
import queue
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from mailservice.testing.smtp_servers import Received

MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*<([^@>\s]+)@[^>]*>", re.IGNORECASE | re.MULTILINE)
# One answer of a service on loopback takes milliseconds; only a hung process reaches this.
REQUEST_TIMEOUT = 30.0


def arrived(received: Iterable[Received]) -> Counter[str]:
    """How many times each request id arrived, by the Message-ID of each message received."""
    counts: Counter[str] = Counter()
    for message in received:
        head = message.content.partition(b"\r\n\r\n")[0] or message.content
        found = MESSAGE_ID.search(head)
        counts[found.group(1).decode() if found else "<no Message-ID>"] += 1
    return counts


@dataclass
class BurstResult:
    """What the clients saw: the accepted request ids, and every answer that was not a 202."""

    request_ids: list[str]
    refusals: list[str] = field(default_factory=list)


class Burst:
    """`total` sends over `ports`: `batched` of them in batches of `batch_size`, the rest single."""

    def __init__(
        self,
        ports: Sequence[int],
        key: str,
        total: int,
        *,
        threads: int = 4,
        batched: int = 0,
        batch_size: int = 50,
        deadline: float = 120.0,
    ) -> None:
        self.ports = list(ports)
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.deadline = time.monotonic() + deadline
        self._jobs: queue.SimpleQueue[list[int]] = queue.SimpleQueue()
        numbers = list(range(total))
        singles = numbers[batched:]
        batches = [numbers[i : min(i + batch_size, batched)] for i in range(0, batched, batch_size)]
        # Batches spread among the singles, so that both kinds run during the whole burst.
        jobs: list[list[int]] = [[n] for n in singles]
        every = len(jobs) // len(batches) + 1 if batches else 0
        for place, batch in enumerate(batches):
            jobs.insert(place * every, batch)
        for job in jobs:
            self._jobs.put(job)
        self._lock = threading.Lock()
        self._ids: list[str] = []
        self._refusals: list[str] = []
        # Daemon threads: a test that fails mid-burst must not keep the run alive until the
        # deadline (its processes are stopped, so what is left fails fast anyway).
        self._threads = [
            threading.Thread(
                target=self._client, args=(self.ports[i % len(self.ports)],), daemon=True
            )
            for i in range(threads)
        ]

    @property
    def accepted(self) -> list[str]:
        """The request ids accepted so far."""
        with self._lock:
            return list(self._ids)

    def start(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def join(self) -> BurstResult:
        """Wait for every thread (each stops at the deadline at the latest)."""
        for thread in self._threads:
            thread.join(max(0.0, self.deadline - time.monotonic()) + REQUEST_TIMEOUT + 5)
        with self._lock:
            return BurstResult(list(self._ids), list(self._refusals))

    def run(self) -> BurstResult:
        return self.start().join()

    def _client(self, port: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
        try:
            while time.monotonic() < self.deadline:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    return
                try:
                    self._send(conn, job)
                except (OSError, http.client.HTTPException) as exc:
                    self._refused(f"{len(job)} message(s) to {port}: {exc!r}")
                    conn.close()  # the next request opens a new connection
            self._refused(f"deadline passed with work left ({port})")
        finally:
            conn.close()

    def _send(self, conn: http.client.HTTPConnection, job: list[int]) -> None:
        messages = [
            {"recipient": f"r{n}@example.com", "subject": f"burst {n}", "body": f"message {n}"}
            for n in job
        ]
        single = len(job) == 1
        body: Any = messages[0] if single else {"messages": messages}
        conn.request(
            "POST", "/send-email" if single else "/send-email/batch", json.dumps(body), self.headers
        )
        response = conn.getresponse()
        raw = response.read()
        if response.status != 202:
            self._refused(f"{response.status} {raw[:300]!r}")
            return
        answer = json.loads(raw)
        ids = [answer["request_id"]] if single else [m["request_id"] for m in answer["messages"]]
        with self._lock:
            self._ids.extend(ids)

    def _refused(self, what: str) -> None:
        with self._lock:
            self._refusals.append(what)
