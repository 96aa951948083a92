"""The Redis store's reads for the dashboard (listing.py), each one bounded round trip.

`mail:recent` is a sorted set of request ids scored by creation time (epoch microseconds),
which the create script adds to and trims to the newest RECENT_WINDOW; a page is one script
that walks it newest first with ZREVRANGEBYSCORE ... LIMIT, reads each record's fields, matches
a search on the stored JSON text, and drops ids whose record has expired. `mail:counts` is a
hash of counts by status and `mail:finished:<minute>:<status>` a counter per minute (kept
MINUTES_KEPT minutes), both changed by the save script in the same step as the record.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from mailservice.stores.codec import RECORD_FIELDS, record_from_fields
from mailservice.stores.contract import EmailStatus
from mailservice.stores.listing import RECENT_WINDOW, RecentPage, Search, page_of

WALK_STEP = 100  # ids one ZREVRANGEBYSCORE of the page script asks for

# KEYS: recent sorted set. ARGV: how many to find, the cursor's score ('+inf' for none) and id
# ('' for none), KEY_PREFIX, the recipient and tag needles ('' for none), RECENT_WINDOW, where
# recipients and tags are among the fields, WALK_STEP, then RECORD_FIELDS (status first).
# Returns up to that many {id, field values...} newest first, after the cursor (equal scores:
# ids below its id, as Redis orders them), looking at no more than RECENT_WINDOW ids; ids
# without a record leave the set.
RECENT_PAGE = """
local want, window = tonumber(ARGV[1]), tonumber(ARGV[7])
local cursor_id, cursor_score = ARGV[3], nil
if cursor_id ~= '' then cursor_score = tonumber(ARGV[2]) end
local r_at, t_at = tonumber(ARGV[8]), tonumber(ARGV[9])
local fields = {unpack(ARGV, 11)}
local out, gone, looked, offset = {}, {}, 0, 0
while #out < want and looked < window do
  local chunk = redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[2], '-inf', 'WITHSCORES',
    'LIMIT', offset, tonumber(ARGV[10]))
  if #chunk == 0 then break end
  offset = offset + #chunk / 2
  for i = 1, #chunk, 2 do
    local id, score = chunk[i], tonumber(chunk[i + 1])
    if not (cursor_score and score == cursor_score and id >= cursor_id) then
      looked = looked + 1
      local values = redis.call('HMGET', ARGV[4] .. id, unpack(fields))
      if not values[1] then
        gone[#gone + 1] = id
      elseif (ARGV[5] == '' or string.find(string.lower(values[r_at] or ''), ARGV[5], 1, true))
          and (ARGV[6] == '' or string.find(values[t_at] or '', ARGV[6], 1, true)) then
        table.insert(values, 1, id)
        out[#out + 1] = values
      end
      if #out >= want or looked >= window then break end
    end
  end
end
if #gone > 0 then redis.call('ZREM', KEYS[1], unpack(gone)) end
return out
"""


class RedisListing:
    """The dashboard's reads on one Redis client, under the key names `redis_store.py` holds
    (the records' prefix, the recent set, the counts hash, the per-minute counters' prefix);
    redis errors pass to the store's guard."""

    def __init__(
        self, client: redis.Redis, key_prefix: str, recent: str, counts: str, finished: str
    ) -> None:
        if RECORD_FIELDS[0] != "status":  # the page script tells a missing record by it
            raise AssertionError("RECORD_FIELDS must begin with status")
        self.client = client
        self.key_prefix = key_prefix
        self.recent_key = recent
        self.counts_key = counts
        self.finished_prefix = finished
        self._page = client.register_script(RECENT_PAGE)

    def finished_key(self, minute: str, status: EmailStatus) -> str:
        """The counter of requests that became `status` (final) in `minute`."""
        return f"{self.finished_prefix}{minute}:{status}"

    def recent(self, limit: int, cursor: tuple[int, str] | None, search: Search) -> RecentPage:
        top, after = ("+inf", "") if cursor is None else (str(cursor[0]), cursor[1])
        args = [
            limit + 1,
            top,
            after,
            self.key_prefix,
            search.recipient_needle,
            search.tag_needle,
            RECENT_WINDOW,
            RECORD_FIELDS.index("recipients") + 1,
            RECORD_FIELDS.index("tags") + 1,
            WALK_STEP,
            *RECORD_FIELDS,
        ]
        rows = self._page(keys=[self.recent_key], args=args)
        found = [record_from_fields(row[0], row[1:]) for row in rows]
        return page_of([record for record in found if record is not None], limit)

    def counts(self) -> dict[EmailStatus, int]:
        stored = self.client.hgetall(self.counts_key)
        return {status: max(0, int(stored.get(str(status), 0))) for status in EmailStatus}

    def finished_in(self, minutes: Sequence[str]) -> dict[tuple[str, EmailStatus], int]:
        wanted = [(m, s) for m in minutes for s in EmailStatus if s.final]
        if not wanted:
            return {}
        values = self.client.mget([self.finished_key(m, s) for m, s in wanted])
        return {key: int(value) for key, value in zip(wanted, values, strict=True) if value}
