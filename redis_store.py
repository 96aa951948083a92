"""The Redis status store: one hash per request, shared by every process of a deployment.

Keys are namespaced `mail:req:<request_id>`. Each write is one pipelined round trip (HSET of
the changed record, plus HDEL of the payload and EXPIRE when final); reads fetch only the status
fields, never the payload. Socket time-outs are short and retries few, so an outage is a quick
StoreError (the API's 503), logged once when it starts and once when it ends.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from errors import StoreError
from status_store import EmailStatus, StatusRecord, StatusStore

logger = logging.getLogger(__name__)

KEY_PREFIX = "mail:req:"
FIELDS = (
    "status",
    "sender",
    "recipients",
    "pending",
    "created_at",
    "updated_at",
    "attempts",
    "error",
    "refused",
)


def _encode(record: StatusRecord) -> dict[str, str]:
    return {
        "status": str(record.status),
        "sender": record.sender,
        "recipients": json.dumps(record.recipients),
        "pending": json.dumps(record.pending),
        "created_at": record.created_at.isoformat(),
        "updated_at": record.updated_at.isoformat(),
        "attempts": str(record.attempts),
        "error": "" if record.error is None else record.error,
        "refused": json.dumps(record.refused),
    }


def _decode(request_id: str, values: list[str | None]) -> StatusRecord | None:
    fields = dict(zip(FIELDS, values, strict=True))
    if fields["status"] is None:
        return None
    return StatusRecord(
        request_id=request_id,
        status=EmailStatus(fields["status"]),
        sender=fields["sender"] or "",
        recipients=tuple(json.loads(fields["recipients"] or "[]")),
        pending=tuple(json.loads(fields["pending"] or "[]")),
        created_at=datetime.fromisoformat(fields["created_at"] or ""),
        updated_at=datetime.fromisoformat(fields["updated_at"] or ""),
        attempts=int(fields["attempts"] or 0),
        error=fields["error"] or None,
        refused=json.loads(fields["refused"] or "{}"),
    )


class RedisStatusStore(StatusStore):
    """Status records in Redis hashes; the durable choice for several processes or hosts."""

    durable = True

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        super().__init__(ttl)
        self.client = client
        self._down = False
        self._down_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, ttl: int, timeout: float = 1.0) -> RedisStatusStore:
        client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
            health_check_interval=30,
        )
        return cls(client, ttl)

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn redis errors into StoreError; log an outage once at its start and its end."""
        try:
            yield
        except redis.RedisError as exc:
            with self._down_lock:
                first, self._down = not self._down, True
            if first:
                logger.warning("status store unreachable: %s (answering 503 until it returns)", exc)
            raise StoreError(f"redis: {exc}") from exc
        if self._down:
            with self._down_lock:
                was_down, self._down = self._down, False
            if was_down:
                logger.warning("status store reachable again")

    def create(self, record: StatusRecord, payload: str) -> None:
        with self._guard():
            self.client.hset(
                KEY_PREFIX + record.request_id, mapping={**_encode(record), "payload": payload}
            )

    def save(self, record: StatusRecord) -> None:
        key = KEY_PREFIX + record.request_id
        with self._guard():
            pipe = self.client.pipeline(transaction=False)
            pipe.hset(key, mapping=_encode(record))
            if record.status.final:
                pipe.hdel(key, "payload")
                pipe.expire(key, self.ttl)
            pipe.execute()

    def get(self, request_id: str) -> StatusRecord | None:
        with self._guard():
            values = self.client.hmget(KEY_PREFIX + request_id, FIELDS)
        return _decode(request_id, values)

    def payload(self, request_id: str) -> str | None:
        with self._guard():
            return self.client.hget(KEY_PREFIX + request_id, "payload")

    def ping(self) -> None:
        with self._guard():
            self.client.ping()

    def durability_warnings(self) -> list[str]:
        """What in the server's configuration can lose accepted requests."""
        try:
            config = self.client.config_get("appendonly") | self.client.config_get(
                "maxmemory-policy"
            )
        except redis.RedisError as exc:
            return [f"could not read the Redis configuration ({exc}); check it by hand"]
        warnings = []
        if config.get("appendonly") != "yes":
            warnings.append("Redis runs without appendonly: a Redis restart loses every request")
        policy = config.get("maxmemory-policy", "noeviction")
        if policy != "noeviction":
            warnings.append(f"Redis maxmemory-policy is {policy}: it may evict unsent requests")
        return warnings

    def close(self) -> None:
        self.client.close()
