"""The Redis status store: one hash per request, shared by every process of a deployment.

Keys are namespaced: `mail:req:<request_id>` (the record and, until final, its payload),
`mail:unfinished` (a set of unfinished ids), `mail:webhooks` (a set of final ids whose webhook
is still pending, kept by the save script and walked with SSCAN, a bounded part per call),
`mail:owner:<owner>` (a process's lease, expiring unless renewed) and `mail:idem:<scope>`
(Idempotency-Keys, 24 h). Each write is one round trip:
a short Lua script that checks and writes atomically (the owner check of `save`, the
set-if-absent of an Idempotency-Key with the create, and every record of a batch in one
script). Reads fetch only the status fields.
Socket time-outs are short and retries few, so an outage is a quick
StoreError (the API's 503), logged once when it starts and once when it ends.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from mailservice.errors import StoreError
from mailservice.stores.codec import RECORD_FIELDS, record_from_fields, record_to_fields
from mailservice.stores.contract import (
    IDEMPOTENCY_TTL,
    IdempotencyClaim,
    OutageLog,
    StatusRecord,
    StatusStore,
    WebhookState,
)

logger = logging.getLogger(__name__)

KEY_PREFIX = "mail:req:"
OWNER_PREFIX = "mail:owner:"
IDEMPOTENCY_PREFIX = "mail:idem:"
UNFINISHED = "mail:unfinished"
WEBHOOKS = "mail:webhooks"
WEBHOOK_SCAN_MAX = 1000  # members of the webhooks set one webhook_orphans() call looks at

# KEYS: unfinished set, the records in order, [idempotency key]. ARGV: record count, claim
# JSON ('' for none), claim TTL, items per record (its id, then its field/value pairs), then
# the records' items. Returns the earlier claim's JSON, or nil once every record is created:
# a batch is one script, so one round trip, and all or nothing with its Idempotency-Key.
CREATE_MANY = """
local count, width = tonumber(ARGV[1]), tonumber(ARGV[4])
if ARGV[2] ~= '' then
  local key = KEYS[count + 2]
  local earlier = redis.call('GET', key)
  if earlier then return earlier end
  redis.call('SET', key, ARGV[2], 'EX', ARGV[3])
end
local ids = {}
for i = 1, count do
  local at = 5 + (i - 1) * width
  ids[i] = ARGV[at]
  redis.call('HSET', KEYS[i + 1], unpack(ARGV, at + 1, at + width - 1))
end
if count > 0 then redis.call('SADD', KEYS[1], unpack(ids)) end
return false
"""

# KEYS: record, unfinished set, webhooks set. ARGV: owner, final (0/1), ttl, request_id,
# webhook pending (0/1), field/value pairs. A final record with its webhook pending joins the
# webhooks set; one whose webhook ended leaves it.
SAVE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
if ARGV[2] == '1' then
  redis.call('HDEL', KEYS[1], 'payload')
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('SREM', KEYS[2], ARGV[4])
  if ARGV[5] == '1' then
    redis.call('SADD', KEYS[3], ARGV[4])
  else
    redis.call('SREM', KEYS[3], ARGV[4])
  end
end
return 1
"""

# KEYS: unfinished set. ARGV: limit, KEY_PREFIX, OWNER_PREFIX. Unfinished ids whose owner holds
# no lease. The record and lease keys are derived from ids read inside the script, so their
# prefixes come in ARGV (not KEYS): the constants above stay the one place the names live.
ORPHANS = """
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local owner = redis.call('HGET', ARGV[2] .. id, 'owner')
  if not owner then
    redis.call('SREM', KEYS[1], id)
  elseif redis.call('EXISTS', ARGV[3] .. owner) == 0 then
    out[#out + 1] = id
    if #out >= tonumber(ARGV[1]) then break end
  end
end
return out
"""

# KEYS: record. ARGV: new owner, OWNER_PREFIX. 1 when taken over (unfinished, owner without a
# lease). The lease key depends on the owner read here, hence its prefix in ARGV.
CLAIM = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner or redis.call('HEXISTS', KEYS[1], 'payload') == 0 then return 0 end
if owner ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. owner) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[1])
return 1
"""


# KEYS: webhooks set. ARGV: limit, KEY_PREFIX, OWNER_PREFIX, owner, the pending state, the
# SSCAN cursor to go on from and how many members of its reply were dealt with already, and
# how many members to look at at most. Ids of final records whose webhook is pending and whose
# owner holds no lease or is `owner`; ids whose record expired or whose webhook ended leave the
# set. Returns {cursor, done, ids}: where the next call goes on ('0', 0: start over). The set can
# be large; one call looks at no more than its share of it.
WEBHOOK_ORPHANS = """
local limit, budget = tonumber(ARGV[1]), tonumber(ARGV[8])
local cursor, skip = ARGV[6], tonumber(ARGV[7])
local out, looked = {}, 0
repeat
  local reply = redis.call('SSCAN', KEYS[1], cursor, 'COUNT', limit)
  local members, kept = reply[2], skip
  for i = skip + 1, #members do
    local id = members[i]
    looked = looked + 1
    local found = redis.call('HMGET', ARGV[2] .. id, 'owner', 'webhook')
    local owner, webhook = found[1], found[2]
    if not owner or webhook ~= ARGV[5] then
      redis.call('SREM', KEYS[1], id)
    else
      kept = kept + 1
      if owner == ARGV[4] or redis.call('EXISTS', ARGV[3] .. owner) == 0 then
        out[#out + 1] = id
      end
    end
    if #out >= limit or looked >= budget then
      -- The rest of this reply comes first next time: the same cursor, past the ones kept.
      if i < #members then return {cursor, kept, out} end
      return {reply[1], 0, out}
    end
  end
  cursor, skip = reply[1], 0
until cursor == '0'
return {'0', 0, out}
"""

# KEYS: record. ARGV: new owner, OWNER_PREFIX, the pending state, then RECORD_FIELDS. The
# record's fields once taken over (final, webhook pending, owner without a lease or the new
# owner itself), else nil: one round trip.
CLAIM_WEBHOOK = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner or redis.call('HGET', KEYS[1], 'webhook') ~= ARGV[3] then return false end
if redis.call('HEXISTS', KEYS[1], 'payload') == 1 then return false end
if owner ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. owner) == 1 then return false end
redis.call('HSET', KEYS[1], 'owner', ARGV[1])
return redis.call('HMGET', KEYS[1], unpack(ARGV, 4))
"""


def _claim_json(claim: IdempotencyClaim) -> str:
    return json.dumps([claim.fingerprint, claim.request_id])


def _claim_of(scope: str, text: str | None) -> IdempotencyClaim | None:
    """The claim stored as `_claim_json` under `scope`'s key (Redis expires the key itself)."""
    return None if text is None else IdempotencyClaim(scope, *json.loads(text))


class RedisStatusStore(StatusStore):
    """Status records in Redis hashes; the durable choice for several processes or hosts."""

    durable = True

    def __init__(self, client: redis.Redis, ttl: int) -> None:
        super().__init__(ttl)
        self.client = client
        self._create_many = client.register_script(CREATE_MANY)
        self._save = client.register_script(SAVE)
        self._orphans = client.register_script(ORPHANS)
        self._claim = client.register_script(CLAIM)
        self._webhook_orphans = client.register_script(WEBHOOK_ORPHANS)
        self._claim_webhook = client.register_script(CLAIM_WEBHOOK)
        self._outage = OutageLog(logger)
        self._webhook_scan: tuple[str, int] = ("0", 0)  # where webhook_orphans() goes on

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
            self._outage.failed(exc)
            raise StoreError(f"redis: {exc}") from exc
        self._outage.succeeded()

    def create(
        self, record: StatusRecord, payload: str, idempotency: IdempotencyClaim | None = None
    ) -> IdempotencyClaim | None:
        return self.create_many([(record, payload)], idempotency)

    def create_many(
        self,
        items: Sequence[tuple[StatusRecord, str]],
        idempotency: IdempotencyClaim | None = None,
    ) -> IdempotencyClaim | None:
        keys = [UNFINISHED, *(KEY_PREFIX + record.request_id for record, _ in items)]
        claim_json = ""
        if idempotency is not None:
            keys.append(IDEMPOTENCY_PREFIX + idempotency.scope)
            claim_json = _claim_json(idempotency)
        args: list[str | int] = [
            len(items),
            claim_json,
            IDEMPOTENCY_TTL,
            2 * len(RECORD_FIELDS) + 3,
        ]
        for record, payload in items:
            args.append(record.request_id)
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
        fields = record_to_fields(record)
        pending = "1" if record.webhook is WebhookState.PENDING else "0"
        final = "1" if record.status.final else "0"
        args = [record.owner, final, self.ttl, record.request_id, pending]
        args += [item for pair in fields.items() for item in pair]
        keys = [KEY_PREFIX + record.request_id, UNFINISHED, WEBHOOKS]
        with self._guard():
            return bool(self._save(keys=keys, args=args))

    def get(self, request_id: str) -> StatusRecord | None:
        with self._guard():
            values = self.client.hmget(KEY_PREFIX + request_id, RECORD_FIELDS)
        return record_from_fields(request_id, values)

    def payload(self, request_id: str) -> str | None:
        with self._guard():
            return self.client.hget(KEY_PREFIX + request_id, "payload")

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
            return list(self._orphans(keys=[UNFINISHED], args=[limit, KEY_PREFIX, OWNER_PREFIX]))

    def claim(self, request_id: str, owner: str) -> tuple[StatusRecord, str] | None:
        key = KEY_PREFIX + request_id
        with self._guard():
            if not self._claim(keys=[key], args=[owner, OWNER_PREFIX]):
                return None
            values = self.client.hmget(key, [*RECORD_FIELDS, "payload"])
        record = record_from_fields(request_id, values[:-1])
        if record is None or values[-1] is None:
            return None
        return record, values[-1]

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
