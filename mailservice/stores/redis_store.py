"""The Redis status store: one hash per request, shared by every process of a deployment.

Keys are namespaced: `mail:req:<request_id>` (the record and, until final, its payload),
`mail:unfinished` (a set of unfinished ids but the scheduled ones: what recovery looks at),
`mail:scheduled` (scheduled ids scored by send_at in epoch seconds: what `due()` reads),
`mail:kept:<request_id>` (a failed request's content, expiring after `kept_seconds`),
`mail:webhooks` (a set of final ids whose webhook is still pending, kept by the save script and
walked with SSCAN, a bounded part per call), `mail:recent`, `mail:counts` and
`mail:finished:<minute>:<status>` (the dashboard's index and counters, changed by the create
and save scripts; read by `redis_listing.py`), `mail:owner:<owner>` (a process's lease,
expiring unless renewed), `mail:idem:<scope>` (Idempotency-Keys, 24 h), and the suppression
lists' `mail:supp:<account> <address>` and `mail:suppressions` (`redis_suppressions.py`,
which names them). Each write is one
round trip: a short Lua script that checks and writes atomically (the owner check of `save`,
the compare-and-set of `replace` with its restore, the hand-over of `take` with the record it
returns, the set-if-absent of an Idempotency-Key with the create, and every record of a batch
in one script); the sets, the scheduled index and the kept content change in the same script
as the record. Reads fetch only the status fields. Socket time-outs are short and retries
few, so an outage is a quick StoreError (the API's 503), logged once when it starts and once
when it ends.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from mailservice.errors import StoreError
from mailservice.stores.codec import RECORD_FIELDS, record_from_fields, record_to_fields
from mailservice.stores.contract import (
    FAILED_CONTENT_TTL,
    IDEMPOTENCY_TTL,
    EmailStatus,
    IdempotencyClaim,
    OutageLog,
    StatusRecord,
    StatusStore,
    WebhookState,
    check_schedule,
    due_at,
)
from mailservice.stores.listing import (
    MINUTES_KEPT,
    RECENT_WINDOW,
    RecentPage,
    Search,
    check_limit,
    created_micros,
    minute_of,
    parse_cursor,
)
from mailservice.stores.redis_listing import RedisListing
from mailservice.stores.redis_scripts import (
    CLAIM,
    CLAIM_WEBHOOK,
    CREATE_MANY,
    DUE,
    ORPHANS,
    REPLACE,
    SAVE,
    TAKE,
    WEBHOOK_ORPHANS,
)
from mailservice.stores.redis_suppressions import RedisSuppressions

logger = logging.getLogger(__name__)

KEY_PREFIX = "mail:req:"
OWNER_PREFIX = "mail:owner:"
IDEMPOTENCY_PREFIX = "mail:idem:"
KEPT_PREFIX = "mail:kept:"  # a failed request's content, expiring after kept_seconds
UNFINISHED = "mail:unfinished"  # unfinished ids but the scheduled: what recovery looks at
SCHEDULED = "mail:scheduled"  # scheduled ids by send_at (epoch seconds): what due() reads
WEBHOOKS = "mail:webhooks"
RECENT = "mail:recent"  # ids by creation time, the newest RECENT_WINDOW (the dashboard's list)
COUNTS = "mail:counts"  # requests by status
FINISHED_PREFIX = "mail:finished:"  # <minute>:<status>, final statuses per minute
FINAL = [str(status) for status in EmailStatus if status.final]  # the save script's ARGV
WEBHOOK_SCAN_MAX = 1000  # members of the webhooks set one webhook_orphans() call looks at
DUE_SCAN_MAX = 1000  # ids of the scheduled set one due() call looks at, at most (stale ones go)


def _claim_json(claim: IdempotencyClaim) -> str:
    return json.dumps([claim.fingerprint, claim.request_id])


def _due_score(record: StatusRecord) -> str:
    """A scheduled record's score in the scheduled set ('' for any other record)."""
    if record.status is not EmailStatus.SCHEDULED:
        return ""
    return repr(due_at(record).timestamp())


def _claim_of(scope: str, text: str | None) -> IdempotencyClaim | None:
    """The claim stored as `_claim_json` under `scope`'s key (Redis expires the key itself)."""
    return None if text is None else IdempotencyClaim(scope, *json.loads(text))


class RedisStatusStore(StatusStore):
    """Status records in Redis hashes; the durable choice for several processes or hosts."""

    durable = True

    def __init__(
        self, client: redis.Redis, ttl: int, failed_content_ttl: int = FAILED_CONTENT_TTL
    ) -> None:
        super().__init__(ttl, failed_content_ttl)
        self.client = client
        self._create_many = client.register_script(CREATE_MANY)
        self._save = client.register_script(SAVE)
        self._replace_script = client.register_script(REPLACE)
        self._orphans = client.register_script(ORPHANS)
        self._due = client.register_script(DUE)
        self._claim = client.register_script(CLAIM)
        self._take = client.register_script(TAKE)
        self._webhook_orphans = client.register_script(WEBHOOK_ORPHANS)
        self._claim_webhook = client.register_script(CLAIM_WEBHOOK)
        self._outage = OutageLog(logger)
        self._webhook_scan: tuple[str, int] = ("0", 0)  # where webhook_orphans() goes on
        self._listing = RedisListing(client, KEY_PREFIX, RECENT, COUNTS, FINISHED_PREFIX)
        self._lists = RedisSuppressions(client)

    @classmethod
    def from_url(
        cls,
        url: str,
        ttl: int,
        timeout: float = 1.0,
        failed_content_ttl: int = FAILED_CONTENT_TTL,
    ) -> RedisStatusStore:
        client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
            health_check_interval=30,
        )
        return cls(client, ttl, failed_content_ttl)

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn redis errors into StoreError; log an outage once at its start and its end."""
        try:
            yield
        except redis.RedisError as exc:
            self._outage.failed(exc)
            raise StoreError(f"redis: {exc}") from exc
        self._outage.succeeded()

    def create_many(
        self,
        items: Sequence[tuple[StatusRecord, str]],
        idempotency: IdempotencyClaim | None = None,
    ) -> IdempotencyClaim | None:
        keys = [
            UNFINISHED,
            RECENT,
            COUNTS,
            SCHEDULED,
            *(KEY_PREFIX + record.request_id for record, _ in items),
        ]
        claim_json = ""
        if idempotency is not None:
            keys.append(IDEMPOTENCY_PREFIX + idempotency.scope)
            claim_json = _claim_json(idempotency)
        args: list[str | int] = [
            len(items),
            claim_json,
            IDEMPOTENCY_TTL,
            2 * len(RECORD_FIELDS) + 6,
            RECENT_WINDOW,
            str(EmailStatus.SCHEDULED),
        ]
        for record, payload in items:
            args += [record.request_id, created_micros(record.created_at), str(record.status)]
            args.append(_due_score(record))
            for name, value in record_to_fields(record).items():
                args += [name, value]
            args += ["payload", payload]
        with self._guard():
            earlier = self._create_many(keys=keys, args=args)
        return None if idempotency is None else _claim_of(idempotency.scope, earlier)

    def idempotency_claim(self, scope: str) -> IdempotencyClaim | None:
        with self._guard():
            return _claim_of(scope, self.client.get(IDEMPOTENCY_PREFIX + scope))

    def save(self, record: StatusRecord) -> bool:
        check_schedule(record)
        return self._write(self._save, record, (record.owner, ""), restore=False)

    def _replace(self, record: StatusRecord, expected: StatusRecord, restore: bool) -> bool:
        # updated_at as the codec stores it (record_to_fields): compared as text.
        check = (str(expected.status), expected.updated_at.isoformat())
        return self._write(self._replace_script, record, check, restore)

    def _write(
        self, script: Script, record: StatusRecord, check: tuple[str, str], restore: bool
    ) -> bool:
        """Run a script that ends in WRITE_BODY (redis_scripts.py) for `record`."""
        request_id = record.request_id
        pending = "1" if record.webhook is WebhookState.PENDING else "0"
        args: list[str | int] = [*check, "1" if restore else "0", self.ttl, request_id, pending]
        args += [str(record.status), MINUTES_KEPT * 60, self.kept_seconds, str(EmailStatus.FAILED)]
        args += [str(EmailStatus.SCHEDULED), _due_score(record), len(FINAL), *FINAL]
        args += [item for pair in record_to_fields(record).items() for item in pair]
        minute = self._listing.finished_key(minute_of(record.updated_at), record.status)
        keys = [KEY_PREFIX + request_id, UNFINISHED, WEBHOOKS, COUNTS, minute]
        keys += [KEPT_PREFIX + request_id, SCHEDULED]
        with self._guard():
            return bool(script(keys=keys, args=args))

    def get(self, request_id: str) -> StatusRecord | None:
        with self._guard():
            values = self.client.hmget(KEY_PREFIX + request_id, RECORD_FIELDS)
        return record_from_fields(request_id, values)

    def get_many(self, request_ids: Sequence[str]) -> dict[str, StatusRecord]:
        ids = list(dict.fromkeys(request_ids))
        if not ids:
            return {}
        with self._guard():
            pipe = self.client.pipeline(transaction=False)  # one round trip, no MULTI
            for request_id in ids:
                pipe.hmget(KEY_PREFIX + request_id, RECORD_FIELDS)
            replies = pipe.execute()
        found = ((i, record_from_fields(i, values)) for i, values in zip(ids, replies, strict=True))
        return {request_id: record for request_id, record in found if record is not None}

    def payload(self, request_id: str) -> str | None:
        with self._guard():
            return self.client.hget(KEY_PREFIX + request_id, "payload")

    def kept_payload(self, request_id: str) -> str | None:
        # The key expires by itself, never after the status (kept_seconds <= ttl).
        with self._guard():
            return self.client.get(KEPT_PREFIX + request_id)

    def heartbeat(self, owner: str, lease_seconds: float) -> None:
        with self._guard():
            if lease_seconds > 0:
                self.client.set(OWNER_PREFIX + owner, "1", px=int(lease_seconds * 1000))
            else:
                self.client.delete(OWNER_PREFIX + owner)

    def orphans(self, limit: int) -> list[str]:
        if limit <= 0:
            return []
        with self._guard():
            return list(
                self._orphans(
                    keys=[UNFINISHED],
                    args=[limit, KEY_PREFIX, OWNER_PREFIX, str(EmailStatus.SCHEDULED)],
                )
            )

    def due(self, now: datetime, limit: int) -> list[str]:
        if limit <= 0:
            return []
        args = [repr(now.timestamp()), limit, KEY_PREFIX, str(EmailStatus.SCHEDULED)]
        with self._guard():
            return list(self._due(keys=[SCHEDULED], args=[*args, max(limit, DUE_SCAN_MAX)]))

    def claim(self, request_id: str, owner: str) -> tuple[StatusRecord, str] | None:
        key = KEY_PREFIX + request_id
        with self._guard():
            if not self._claim(keys=[key], args=[owner, OWNER_PREFIX, str(EmailStatus.SCHEDULED)]):
                return None
            values = self.client.hmget(key, [*RECORD_FIELDS, "payload"])
        record = record_from_fields(request_id, values[:-1])
        if record is None or values[-1] is None:
            return None
        return record, values[-1]

    def take(self, request_id: str, from_owner: str, owner: str) -> tuple[StatusRecord, str] | None:
        args = [from_owner, owner, *RECORD_FIELDS, "payload"]
        with self._guard():
            values = self._take(keys=[KEY_PREFIX + request_id], args=args)
        if values is None:
            return None
        record = record_from_fields(request_id, values[:-1])
        return None if record is None or values[-1] is None else (record, values[-1])

    def webhook_orphans(self, limit: int, owner: str) -> list[str]:
        if limit <= 0:
            return []
        cursor, done = self._webhook_scan
        args = [limit, KEY_PREFIX, OWNER_PREFIX, owner, str(WebhookState.PENDING), cursor, done]
        with self._guard():
            cursor, done, ids = self._webhook_orphans(
                keys=[WEBHOOKS], args=[*args, max(limit, WEBHOOK_SCAN_MAX)]
            )
        self._webhook_scan = (str(cursor), int(done))
        return list(ids)

    def claim_webhook(self, request_id: str, owner: str) -> StatusRecord | None:
        args = [owner, OWNER_PREFIX, str(WebhookState.PENDING), *RECORD_FIELDS]
        with self._guard():
            values = self._claim_webhook(keys=[KEY_PREFIX + request_id], args=args)
        return None if values is None else record_from_fields(request_id, values)

    def recent(
        self, limit: int, before: str | None = None, search: Search | None = None
    ) -> RecentPage:
        check_limit(limit)
        cursor = None if before is None else parse_cursor(before)
        with self._guard():
            return self._listing.recent(limit, cursor, search or Search())

    def counts(self) -> dict[EmailStatus, int]:
        with self._guard():
            return self._listing.counts()

    def _finished_in(self, minutes: Sequence[str]) -> dict[tuple[str, EmailStatus], int]:
        with self._guard():
            return self._listing.finished_in(minutes)

    def ping(self) -> None:
        with self._guard():
            self.client.ping()

    def _lists_guard(self) -> AbstractContextManager[object]:
        return self._guard()  # redis-py's errors as StoreError, the outage logged once

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
