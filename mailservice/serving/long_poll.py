"""What the gunicorn worker knows of long polls (`GET /email-status/<id>?wait=N`, API.md 4).

A long poll holds the thread that serves it for up to 30 s. In gthread's pool of
GUNICORN_THREADS (8) threads, eight waiters would hold them all and every send would wait.
`BufferingThreadWorker` reads each request whole before a thread takes it, so it knows the
request line first: `is_long_poll()` tells it apart, and the worker gives it a thread of a
second pool of up to WAIT_THREADS (256), made as they are needed, so that waiters never hold
the threads that serve sends. Past WAIT_THREADS the long polls queue in that pool (each waits
its N seconds once it has a thread), so that the app's own bound, WAITERS_MAX (1,000) waiting at
once per process (events/status_watch.py), is not reached here; every connection, a waiting one
too, counts against gunicorn's `worker_connections` (1,000), past which a worker stops accepting.

A stopping worker (SIGTERM) calls the app's stop hooks before it waits for the requests in
progress: `app.extensions[STOP_HOOKS]`, callables the app registers (mail_server.create_app
registers the status watch's `close()`, which makes every waiter answer its current status at
once), so that gunicorn's graceful wait is not spent on clients waiting for a status.

`python mail_server.py` (Werkzeug) serves each request on a thread of its own: a long poll
holds no thread another request needs, and nothing here applies.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from concurrent import futures
from typing import Any
from urllib.parse import parse_qsl, unquote_to_bytes, urlsplit

logger = logging.getLogger(__name__)

STATUS_PATH = b"/email-status/"  # the route of api/core_routes.py
WAIT_PARAMETER = "wait"
STOP_HOOKS = "serving.stop_hooks"  # app.extensions key: callables called once at a stop
MAX_LINE = 8192  # the request line is looked for in this much of the head


def is_long_poll(head: bytes) -> bool:
    """Whether the request starting `head` is a GET (or HEAD) of a status with a `wait` query
    parameter, whatever its value (the app answers a bad one 400 at once)."""
    line = head[:MAX_LINE].lstrip(b"\r\n").partition(b"\r\n")[0]
    parts = line.split(b" ")
    if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD"):
        return False
    path, _, query = request_path(parts[1]).partition(b"?")
    if not path.startswith(STATUS_PATH) or not query:
        return False
    text = query.decode("latin-1")
    return any(name == WAIT_PARAMETER for name, _ in parse_qsl(text, keep_blank_values=True))


def request_path(target: bytes) -> bytes:
    """The path and query of a request target as the app is routed by them: an absolute-form
    target (`http://host/email-status/...`, RFC 9112 3.2.2, which servers must accept and
    forward proxies send) loses its scheme and authority, and the path is percent-decoded
    (`/email%2Dstatus/` is routed to the status route too)."""
    if target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
        parts = urlsplit(target)
        target = parts.path + (b"?" + parts.query if parts.query else b"")
    path, mark, query = target.partition(b"?")
    return unquote_to_bytes(path) + mark + query


def stop_hooks(app: Any) -> Iterable[Callable[[], object]]:
    """The stop hooks an app registered (none for an app that is not Flask-like)."""
    return getattr(app, "extensions", {}).get(STOP_HOOKS, ())


class LongPollThreads:
    """Mixed into BufferingThreadWorker ahead of gthread's ThreadWorker (whose attributes it
    uses: `method_queue`, `handle`, `finish_request`, `wsgi`, `alive`): the long polls' own
    pool, and the app's stop hooks when the worker stops."""

    WAIT_THREADS = 256
    wait_pool: futures.ThreadPoolExecutor | None = None
    _stop_hooks_called = False

    def init_process(self) -> None:
        # Before gthread's own: the base class's init_process() ends by calling run().
        self.wait_pool = futures.ThreadPoolExecutor(
            max_workers=self.WAIT_THREADS, thread_name_prefix="long-poll"
        )
        super().init_process()  # type: ignore[misc]

    def run(self) -> None:
        try:
            super().run()  # type: ignore[misc]
        finally:
            if self.wait_pool is not None:
                self.wait_pool.shutdown(wait=False)

    def submit_whole(self, conn: Any, head: bytes) -> None:
        """A request read whole to a thread: a long poll's, or one of gthread's pool (its
        enqueue_req). The same handling either way, keep-alive and all."""
        if self.wait_pool is None or not is_long_poll(head):
            super().enqueue_req(conn)  # type: ignore[misc]
            return
        worker: Any = self
        done = self.wait_pool.submit(worker.handle, conn)
        done.add_done_callback(
            lambda fut: worker.method_queue.defer(worker.finish_request, conn, fut)
        )

    # -- stopping ---------------------------------------------------------------------------

    def handle_exit(self, sig: int, frame: Any) -> None:
        """SIGTERM: gthread's graceful stop, and the stop hooks, run by the poller loop at once
        (not in the signal handler) before it waits for the requests in progress."""
        super().handle_exit(sig, frame)  # type: ignore[misc]
        self.method_queue.defer(self.call_stop_hooks)  # type: ignore[attr-defined]

    def handle_quit(self, sig: int, frame: Any) -> None:
        """SIGQUIT, SIGINT: stop at once; waiters answer rather than being cut off."""
        self.call_stop_hooks()
        if self.wait_pool is not None:
            self.wait_pool.shutdown(wait=False)
        super().handle_quit(sig, frame)  # type: ignore[misc]

    def murder_pending(self) -> None:
        """gthread's sweep; and the stop hooks for a worker that stops without SIGTERM
        (max_requests reached, its master gone)."""
        super().murder_pending()  # type: ignore[misc]
        if not self.alive:  # type: ignore[attr-defined]
            self.call_stop_hooks()

    def call_stop_hooks(self) -> None:
        """Call each of the app's stop hooks, once; one that raises is logged, the others run."""
        if self._stop_hooks_called:
            return
        self._stop_hooks_called = True  # first: a signal arriving meanwhile skips them
        for hook in stop_hooks(self.wsgi):  # type: ignore[attr-defined]
            try:
                hook()
            except Exception:
                logger.exception("stop hook %r failed", hook)
