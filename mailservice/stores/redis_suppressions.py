"""The Redis store's suppression lists: one key per entry, expiring by itself, and a
lexicographic index for the listing.

`mail:supp:<account> <address>` holds an entry as JSON `[reason, created_at, until]` (epoch
seconds) and expires at `until` (PXAT): Redis forgets it itself, whichever process wrote it.
`mail:suppressions` is a sorted set of "<account> <address>", every score 0, walked with
ZRANGEBYLEX in (account, address) order; a member whose key has expired is removed by the
listing script that finds it (`LIST`), which looks at a bounded number of members per call.
`suppressed()` is one MGET for a whole message's recipients; each write one MULTI pipeline.
The caller (redis_store.py) runs each call under its guard (redis errors -> StoreError).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence

import redis

from mailservice.stores.suppressions import (
    SEPARATOR,
    Suppression,
    SuppressionPage,
    cursor_of,
    epoch,
    from_epoch,
    key_of,
)

ENTRY_PREFIX = "mail:supp:"
INDEX = "mail:suppressions"
SCAN_MAX = 1000  # index members one listing call looks at, at most (expired ones go)
AFTER_SEPARATOR = chr(ord(SEPARATOR) + 1)  # "<account>!" bounds the account's members

# KEYS: the index. ARGV: lex min, lex max, limit, members to look at, the entry key prefix.
# Returns {cursor or false, {member, value, ...}}: up to `limit` live entries in order, their
# members and JSON; the cursor (the last member answered, or the last looked at when the look
# ended before the page was full) when there may be more. Members whose key is gone leave the
# index.
LIST = """
local limit, scan = tonumber(ARGV[3]), tonumber(ARGV[4])
local members = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], ARGV[2], 'LIMIT', 0, scan)
local found, stale, cursor = {}, {}, false
for _, member in ipairs(members) do
  if #found == 2 * limit then
    cursor = found[#found - 1]
    break
  end
  local value = redis.call('GET', ARGV[5] .. member)
  if value then
    found[#found + 1] = member
    found[#found + 1] = value
  else
    stale[#stale + 1] = member
  end
end
if not cursor and #members == scan then
  if #found > 0 and #found == 2 * limit then cursor = found[#found - 1]
  else cursor = members[#members] end
end
if #stale > 0 then redis.call('ZREM', KEYS[1], unpack(stale)) end
return {cursor, found}
"""


class RedisSuppressions:
    """The suppression lists on the store's client."""

    def __init__(self, client: redis.Redis, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self._clock = clock
        self._list = client.register_script(LIST)

    def suppress(self, entry: Suppression) -> None:
        key = ENTRY_PREFIX + entry.key
        until = epoch(entry.until)
        pipe = self.client.pipeline(transaction=True)  # MULTI: the entry and its index together
        if until <= self._clock():  # already past: nothing to keep (PXAT wants a future time)
            pipe.delete(key)
            pipe.zrem(INDEX, entry.key)
        else:
            value = json.dumps([entry.reason, epoch(entry.created_at), until])
            pipe.set(key, value, pxat=int(until * 1000))
            pipe.zadd(INDEX, {entry.key: 0})
        pipe.execute()

    def suppressed(self, account: str, addresses: Sequence[str]) -> dict[str, str]:
        values = self.client.mget([ENTRY_PREFIX + key_of(account, a) for a in addresses])
        now = self._clock()
        found: dict[str, str] = {}
        for address, value in zip(addresses, values, strict=True):
            if value is not None:
                reason, _, until = json.loads(value)
                if until > now:  # Redis expires it in its own time; not answered past it
                    found[address] = reason
        return found

    def suppressions(
        self, account: str | None, limit: int, after: tuple[str, str] | None
    ) -> SuppressionPage:
        if after is not None:
            low = "(" + key_of(*after)
        elif account is not None:
            low = "[" + account + SEPARATOR
        else:
            low = "-"
        high = "+" if account is None else "(" + account + AFTER_SEPARATOR
        args = [low, high, limit, max(limit + 1, SCAN_MAX), ENTRY_PREFIX]
        cursor, found = self._list(keys=[INDEX], args=args)
        now = self._clock()
        entries: list[Suppression] = []
        for member, value in zip(found[::2], found[1::2], strict=True):
            entry_account, _, address = member.partition(SEPARATOR)
            reason, created_at, until = json.loads(value)
            if until > now:
                entries.append(
                    Suppression(
                        entry_account, address, reason, from_epoch(created_at), from_epoch(until)
                    )
                )
        if not cursor:
            return SuppressionPage(tuple(entries))
        last_account, _, last_address = str(cursor).partition(SEPARATOR)
        return SuppressionPage(tuple(entries), cursor_of(last_account, last_address))

    def unsuppress(self, account: str, address: str) -> bool:
        member = key_of(account, address)
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(ENTRY_PREFIX + member)
        pipe.zrem(INDEX, member)
        deleted, _ = pipe.execute()
        return bool(deleted)
