"""The buffering worker with small bounds, for tests: gunicorn loads it by name
(`--worker-class tests.tight_worker.TightWorker`), so the bounds are class attributes here."""

from __future__ import annotations

from mailservice.serving.http_worker import BufferingThreadWorker


class TightWorker(BufferingThreadWorker):
    """At most 5 connections and 200 kB buffering; a body must arrive within 3 s."""

    HEAD_SECONDS = 30.0  # only the other bounds close a connection in these tests
    REQUEST_SECONDS = 3.0
    MAX_BUFFERING = 5
    BUFFER_MAX_BYTES = 200_000
