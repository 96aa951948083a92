"""Name lookups with a time limit: getaddrinfo on a few threads of their own.

`socket.getaddrinfo` takes no time-out: a name server that never answers holds the calling
thread for as long as the system's resolver keeps asking (resolv.conf's timeout times its
attempts, per server). `NameLookup.addresses(host, port, timeout)` hands the lookup to one of
`threads` daemon threads and waits at most `timeout` seconds for it; past that it raises
TimeoutError and the caller goes on, while the lookup ends in the background and its answer is
dropped. At most `queue_max` lookups wait for a thread: when slow lookups hold every thread and
that many wait, a new one fails at once (TimeoutError too), so that nothing grows without bound.

One per process is shared by the webhook client (every try) and the API's send-time check of
a `callback_url`. Daemon threads: a lookup still under way never holds up the process's exit.
"""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

THREADS = 8  # lookups under way at once
QUEUE_MAX = 64  # lookups waiting for a thread


def addresses(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to, in the resolver's order, each once; socket.gaierror
    when it does not resolve (getaddrinfo itself: no time limit)."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in found))


@dataclass(slots=True, eq=False)
class _Lookup:
    host: str
    port: int
    done: threading.Event = field(default_factory=threading.Event)
    found: list[str] = field(default_factory=list)
    error: BaseException | None = None
    abandoned: bool = False  # its caller stopped waiting: a thread that takes it skips it


class NameLookup:
    """`addresses()` with a time limit; `resolve` is the lookup itself (tests may replace it)."""

    def __init__(
        self,
        threads: int = THREADS,
        queue_max: int = QUEUE_MAX,
        resolve: Callable[[str, int], list[str]] = addresses,
    ) -> None:
        self.threads = threads
        self._resolve = resolve
        self._queue: queue.Queue[_Lookup | None] = queue.Queue(queue_max)
        self._lock = threading.Lock()
        self._started = 0
        self._idle = 0
        self._closed = False

    def addresses(self, host: str, port: int, timeout: float) -> list[str]:
        """What `resolve(host, port)` answers, within `timeout` seconds: its addresses, or the
        error it raised (socket.gaierror, UnicodeError); TimeoutError when it took longer, or
        when too many lookups are waiting already."""
        if timeout <= 0:
            raise TimeoutError(f"no time left to resolve {host}")
        lookup = _Lookup(host, port)
        with self._lock:
            if self._closed:
                raise TimeoutError(f"cannot resolve {host}: shutting down")
            try:
                self._queue.put_nowait(lookup)
            except queue.Full:
                raise TimeoutError(f"cannot resolve {host}: too many lookups waiting") from None
            # A thread more while lookups outnumber the threads free to take them.
            if self._queue.qsize() > self._idle and self._started < self.threads:
                self._started += 1
                threading.Thread(target=self._run, name="name-lookup", daemon=True).start()
        if not lookup.done.wait(timeout):
            lookup.abandoned = True
            raise TimeoutError(f"resolving {host} took longer than {timeout:g} s")
        if lookup.error is not None:
            raise lookup.error
        return lookup.found

    def _run(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            lookup = self._queue.get()
            with self._lock:
                self._idle -= 1
            if lookup is None:
                return
            if lookup.abandoned:
                continue
            try:
                lookup.found = self._resolve(lookup.host, lookup.port)
            except Exception as exc:  # handed to the caller, which raises it in its own thread
                lookup.error = exc
            finally:
                lookup.done.set()

    def close(self) -> None:
        """Let the threads end once their lookup does; later lookups fail at once."""
        with self._lock:
            self._closed = True
            started = self._started
        for _ in range(started):
            try:
                self._queue.put_nowait(None)
            except queue.Full:  # threads held by slow lookups: they are daemons, and exit with us
                break
