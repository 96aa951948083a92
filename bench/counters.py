"""What the servers a row talks to did during its burst, per message: read before and after it.

Each probe has `begin()` (just before the burst) and `end(messages)` (once the sink has every
message), whose answer goes into the row's JSON:

- `RedisCounter`: a redis-server's commands (INFO commandstats, by command) and its read
  events (INFO stats `total_reads_processed`). A read event is what a client's request costs
  the server: a pipeline or a MULTI ... EXEC arrives in one read however many commands it
  holds, so reads count round trips and commands count work (a command a Lua script calls
  counts too). The probe's own INFO calls are two of each, a rounding error on a burst.
- `RabbitCounter`: the socket receives (`recv_cnt`) and sends of the connections of one vhost,
  by `rabbitmqctl list_connections`, RabbitMQ's nearest thing to round trips (its per-queue
  publish and ack rates are in the management plugin, which may be off). A connection closed
  during the burst takes its counts with it; the clients here keep theirs open.
- `CpuProbe`: utime + stime of some processes (a server's, or one role's of a row).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import redis

from bench.measure import per_message
from bench.services import cpu_seconds
from mailservice.testing.rabbitmq import rabbitmqctl


class Probe(Protocol):
    def begin(self) -> None: ...

    def end(self, messages: int) -> Any: ...


def _ratio(count: float, messages: int) -> float | None:
    return count / messages if messages else None


def redis_counts(client: redis.Redis) -> tuple[int, dict[str, int]]:
    """(read events, calls by command) of a redis-server. A command a script calls counts
    as one (commandstats): a store's EVALSHA of five HSETs is six commands, one read."""
    reads = int(client.info("stats")["total_reads_processed"])
    stats = client.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}
    return reads, calls


class RedisCounter:
    """Round trips (read events) and commands of one redis-server, per message; read on one
    connection of its own, opened at `begin()`, so the probe costs the server a few reads."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._client: redis.Redis | None = None
        self._reads = 0
        self._calls: dict[str, int] = {}

    def begin(self) -> None:
        self._client = redis.Redis(port=self.port, socket_timeout=5)
        self._reads, self._calls = redis_counts(self._client)

    def end(self, messages: int) -> dict[str, Any]:
        assert self._client is not None, "end() before begin()"
        try:
            reads, calls = redis_counts(self._client)
        finally:
            self._client.close()
            self._client = None
        delta = {name: n - self._calls.get(name, 0) for name, n in calls.items()}
        delta = {name: n for name, n in sorted(delta.items()) if n > 0}
        return {
            "round_trips_per_msg": _ratio(reads - self._reads, messages),
            "commands_per_msg": _ratio(sum(delta.values()), messages),
            "commands_by_name_per_msg": {name: _ratio(n, messages) for name, n in delta.items()},
        }


def rabbit_connections(vhost: str) -> dict[str, tuple[int, int]]:
    """(socket receives, socket sends) of each AMQP connection to `vhost`, by name."""
    out = rabbitmqctl(
        "list_connections", "--quiet", "--no-table-headers", "vhost", "recv_cnt", "send_cnt", "name"
    )
    found = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) >= 4 and parts[0] == vhost:
            found["\t".join(parts[3:])] = (int(parts[1]), int(parts[2]))
    return found


class RabbitCounter:
    """Socket receives and sends of a vhost's connections, per message."""

    def __init__(self, vhost: str) -> None:
        self.vhost = vhost
        self._before: dict[str, tuple[int, int]] = {}

    def begin(self) -> None:
        self._before = rabbit_connections(self.vhost)

    def end(self, messages: int) -> dict[str, Any]:
        after = rabbit_connections(self.vhost)
        received = sent = 0
        for name, (recv, send) in after.items():
            recv0, send0 = self._before.get(name, (0, 0))
            received, sent = received + recv - recv0, sent + send - send0
        return {
            "round_trips_per_msg": _ratio(received, messages),
            "socket_sends_per_msg": _ratio(sent, messages),
            "connections": len(after),
        }


class CpuProbe:
    """CPU microseconds per message of the processes `pids()` names (read again at the end,
    so that a process started in between counts whole)."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self.pids = pids
        self._before: dict[int, float] = {}

    def begin(self) -> None:
        self._before = {pid: cpu_seconds([pid]) for pid in self.pids()}

    def end(self, messages: int) -> float | None:
        pids = self.pids()
        used = sum(cpu_seconds([pid]) - self._before.get(pid, 0.0) for pid in pids)
        return per_message(used, messages) if pids else None
