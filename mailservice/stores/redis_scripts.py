"""The Redis store's Lua scripts: each check-and-write of `redis_store.py` as one atomic round
trip. Each script's comment says its KEYS and ARGV; key names are `redis_store.py`'s constants,
passed in KEYS, or in ARGV as prefixes where a key is derived from a value read inside the
script.
"""

# KEYS: unfinished set, recent sorted set, counts hash, scheduled sorted set, the records in
# order, [idempotency key]. ARGV: record count, claim JSON ('' for none), claim TTL, items per
# record, RECENT_WINDOW, the scheduled status, then per record its id, creation score, status,
# due score (send_at, for a scheduled one) and field/value pairs. Returns the earlier claim's
# JSON, or nil once every record is created: a batch is one script, so one round trip, and all
# or nothing with its Idempotency-Key; the recent index and the counts change with it. A
# scheduled record joins the scheduled set, any other the unfinished set.
CREATE_MANY = """
local count, width, window = tonumber(ARGV[1]), tonumber(ARGV[4]), tonumber(ARGV[5])
if ARGV[2] ~= '' then
  local key = KEYS[count + 5]
  local earlier = redis.call('GET', key)
  if earlier then return earlier end
  redis.call('SET', key, ARGV[2], 'EX', ARGV[3])
end
local ids, scored, tally = {}, {}, {}
for i = 1, count do
  local at = 7 + (i - 1) * width
  if ARGV[at + 2] == ARGV[6] then
    redis.call('ZADD', KEYS[4], ARGV[at + 3], ARGV[at])
  else
    ids[#ids + 1] = ARGV[at]
  end
  scored[#scored + 1] = ARGV[at + 1]
  scored[#scored + 1] = ARGV[at]
  tally[ARGV[at + 2]] = (tally[ARGV[at + 2]] or 0) + 1
  redis.call('HSET', KEYS[i + 4], unpack(ARGV, at + 4, at + width - 1))
end
if #ids > 0 then redis.call('SADD', KEYS[1], unpack(ids)) end
if count > 0 then
  redis.call('ZADD', KEYS[2], unpack(scored))
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(window + 1))
  for status, n in pairs(tally) do redis.call('HINCRBY', KEYS[3], status, n) end
end
return false
"""

# What SAVE (and REPLACE) write once their check passed. KEYS: record, unfinished set, webhooks
# set, counts hash, this minute's counter of the new status, the record's kept content, the
# scheduled set. ARGV: the check's two values, restore (0/1, see REPLACE), ttl, request_id,
# webhook pending (0/1), the new status, the minute counter's TTL, how long failed content is
# kept, the failed status, the scheduled status, the due score (send_at, when scheduled), how
# many final statuses there are, those statuses, then field/value pairs. A final status stays
# (0, nothing written, when the new status is another; restore alone brings a failed request
# back). A final record drops its payload and expires after ttl; a failed one keeps its
# payload in its own key for the time given (saved failed again, a webhook's outcome, what was
# kept stays); any other final status deletes what was kept. A final record with its webhook
# pending joins the webhooks set; one whose webhook ended leaves it. An unfinished record is in
# the scheduled set while scheduled and in the unfinished set otherwise (where recovery looks),
# never in both; a final one in neither. A change of status moves one count from the old
# status to the new (never below 0: counts begin at zero on a store that held requests before
# them), and a request becoming final counts in its minute.
WRITE_HEAD = """
local found = redis.call('HMGET', KEYS[1], 'owner', 'status', 'updated_at')
local old, new = found[2], ARGV[7]
if not old then return 0 end
local finals, count = {}, tonumber(ARGV[13])
for i = 14, 13 + count do finals[ARGV[i]] = true end
"""
WRITE_BODY = """
local restored = false
if ARGV[3] == '1' then
  restored = redis.call('GET', KEYS[6])
  if not restored then return 0 end
elseif finals[old] and old ~= new then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 14 + count))
if old ~= new then
  if not finals[old] and tonumber(redis.call('HGET', KEYS[4], old) or '0') > 0 then
    redis.call('HINCRBY', KEYS[4], old, -1)
  end
  redis.call('HINCRBY', KEYS[4], new, 1)
  if finals[new] and not finals[old] then
    redis.call('INCR', KEYS[5])
    redis.call('EXPIRE', KEYS[5], ARGV[8])
  end
end
if finals[new] then
  local payload = redis.call('HGET', KEYS[1], 'payload')
  if new ~= ARGV[10] or tonumber(ARGV[9]) <= 0 then
    redis.call('DEL', KEYS[6])
  elseif payload then
    redis.call('SET', KEYS[6], payload, 'EX', ARGV[9])
  end
  redis.call('HDEL', KEYS[1], 'payload')
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('SREM', KEYS[2], ARGV[5])
  redis.call('ZREM', KEYS[7], ARGV[5])
  if ARGV[6] == '1' then
    redis.call('SADD', KEYS[3], ARGV[5])
  else
    redis.call('SREM', KEYS[3], ARGV[5])
  end
else
  if restored then
    redis.call('HSET', KEYS[1], 'payload', restored)
    redis.call('DEL', KEYS[6])
    redis.call('PERSIST', KEYS[1])
    redis.call('SREM', KEYS[3], ARGV[5])
  end
  if new == ARGV[11] then
    redis.call('ZADD', KEYS[7], ARGV[12], ARGV[5])
    redis.call('SREM', KEYS[2], ARGV[5])
  else
    redis.call('ZREM', KEYS[7], ARGV[5])
    redis.call('SADD', KEYS[2], ARGV[5])
  end
end
return 1
"""

# The write of `save`: refused (0) unless the first check value, the owner, owns the record.
SAVE = WRITE_HEAD + "if found[1] ~= ARGV[1] then return 0 end\n" + WRITE_BODY

# The write of `replace`, whoever owns the record: refused (0) unless it still has the status
# and updated_at given as the check values. With restore, the kept content becomes the payload
# again (0 when there is none any more): the record is unfinished again, without a TTL, out
# of the webhooks set and back in the unfinished set.
REPLACE = WRITE_HEAD + "if old ~= ARGV[1] or found[3] ~= ARGV[2] then return 0 end\n" + WRITE_BODY

# KEYS: unfinished set. ARGV: limit, KEY_PREFIX, OWNER_PREFIX, the scheduled status. Unfinished
# ids whose owner holds no lease. The record and lease keys are derived from ids read inside the
# script, so their prefixes come in ARGV (not KEYS): redis_store.py's constants stay the one
# place the names live. A scheduled record is never in the set; were one found there, it would
# leave it rather than be sent before its time.
ORPHANS = """
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local found = redis.call('HMGET', ARGV[2] .. id, 'owner', 'status')
  local owner = found[1]
  if not owner or found[2] == ARGV[4] then
    redis.call('SREM', KEYS[1], id)
  elseif redis.call('EXISTS', ARGV[3] .. owner) == 0 then
    out[#out + 1] = id
    if #out >= tonumber(ARGV[1]) then break end
  end
end
return out
"""

# KEYS: record. ARGV: new owner, OWNER_PREFIX, the scheduled status. 1 when taken over
# (unfinished and not scheduled, owner without a lease). The lease key depends on the owner read
# here, hence its prefix in ARGV.
CLAIM = """
local found = redis.call('HMGET', KEYS[1], 'owner', 'status')
local owner = found[1]
if not owner or found[2] == ARGV[3] then return 0 end
if redis.call('HEXISTS', KEYS[1], 'payload') == 0 then return 0 end
if owner ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. owner) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[1])
return 1
"""

# KEYS: record. ARGV: the owner that handed it out, the new owner, then RECORD_FIELDS and
# 'payload'. The record's fields and payload once handed on (unfinished, owned by the first
# owner, whose lease does not matter, or already by the new one: redis-py retries a call whose
# reply timed out, and the retry must find the request its own), else nil: one round trip,
# unlike CLAIM.
TAKE = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner ~= ARGV[1] and owner ~= ARGV[2] then return false end
if redis.call('HEXISTS', KEYS[1], 'payload') == 0 then return false end
redis.call('HSET', KEYS[1], 'owner', ARGV[2])
return redis.call('HMGET', KEYS[1], unpack(ARGV, 3))
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

# KEYS: scheduled set. ARGV: now (epoch seconds), limit, KEY_PREFIX, the scheduled status, how
# many ids to look at at most. Ids of scheduled records due by now, earliest first (equal
# scores: by id, as Redis orders them), at most limit; ids whose record is gone or no longer
# scheduled leave the set.
DUE = """
local limit, budget = tonumber(ARGV[2]), tonumber(ARGV[5])
local out, looked = {}, 0
while #out < limit and looked < budget do
  local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', #out, limit - #out)
  if #ids == 0 then break end
  for _, id in ipairs(ids) do
    looked = looked + 1
    if redis.call('HGET', ARGV[3] .. id, 'status') == ARGV[4] then
      out[#out + 1] = id
    else
      redis.call('ZREM', KEYS[1], id)
    end
  end
end
return out
"""
