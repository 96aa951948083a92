"""The Lua of the sender gate's Redis backend (gate_backends.RedisGateBackend): each call one
script, so that a reservation, a pause, its end and a probe's release are atomic across every
process, and on Redis's own clock (TIME: Redis 5 or later, which replicates a script's
effects rather than the script)."""

NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# KEYS: the account's hash, its day counter's prefix, the request's slot key.
# ARGV: interval, daily, probe_timeout, probe_poll, slot grace, the request id.
# Redis's own clock (TIME), so that processes on hosts whose clocks differ agree.
RESERVE = (
    NOW
    + """
local interval, daily = tonumber(ARGV[1]), tonumber(ARGV[2])
local probe_timeout, probe_poll = tonumber(ARGV[3]), tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'until', 'reason', 'probe', 'probe_until', 'tat',
                         'epoch')
if state[1] then
  local paused_until = tonumber(state[1])
  if now < paused_until then
    return {tostring(paused_until - now), state[2]}
  end
  local probe = state[3] or ''
  if probe ~= '' and probe ~= ARGV[6] and now < tonumber(state[4] or '0') then
    return {tostring(probe_poll), state[2] .. ' (its probe is out)'}
  end
  if probe ~= ARGV[6] then
    redis.call('HSET', KEYS[1], 'probe', ARGV[6], 'probe_until', tostring(now + probe_timeout))
  end
end
local day = math.floor(now / 86400)
local day_key = KEYS[2] .. day
if daily > 0 and tonumber(redis.call('GET', day_key) or '0') >= daily then
  return {tostring((day + 1) * 86400 - now), 'daily limit of ' .. daily .. ' reached'}
end
if interval > 0 then
  local epoch = state[6] or '0'
  local held = redis.call('GET', KEYS[3])
  local slot = nil
  if held then
    local sep = string.find(held, ':', 1, true)
    if string.sub(held, 1, sep - 1) == epoch then
      slot = tonumber(string.sub(held, sep + 1))
    end
  end
  if not slot then
    slot = math.max(now, tonumber(state[5] or '0'))
    redis.call('HSET', KEYS[1], 'tat', tostring(slot + interval))
    redis.call('SET', KEYS[3], epoch .. ':' .. tostring(slot), 'PX',
               math.ceil((slot - now + tonumber(ARGV[5])) * 1000))
  end
  if slot > now then
    return {tostring(slot - now), false}
  end
  redis.call('DEL', KEYS[3])
end
redis.call('INCR', day_key)
redis.call('EXPIRE', day_key, 172800)
return {'0', false}
"""
)

# KEYS: the account's hash. ARGV: seconds, reason.
PAUSE = (
    NOW
    + """
local ends = now + tonumber(ARGV[1])
local tat = math.max(tonumber(redis.call('HGET', KEYS[1], 'tat') or '0'), ends)
redis.call('HSET', KEYS[1], 'until', tostring(ends), 'reason', ARGV[2], 'seconds', ARGV[1],
           'tat', tostring(tat))
redis.call('HDEL', KEYS[1], 'probe', 'probe_until')
redis.call('HINCRBY', KEYS[1], 'epoch', 1)
"""
)

# KEYS: the account's hash. ARGV: 1 to end the pause if it has ended, 0 to read it.
PAUSED = (
    NOW
    + """
local p = redis.call('HMGET', KEYS[1], 'until', 'reason', 'seconds')
if not p[1] then
  return false
end
local ended = now >= tonumber(p[1])
if ARGV[1] == '1' then
  if not ended then
    return false
  end
  redis.call('HDEL', KEYS[1], 'until', 'reason', 'seconds', 'probe', 'probe_until')
end
return {p[1], p[2], p[3], ended and 1 or 0}
"""
)

# KEYS: the account's hash. ARGV: the request id.
RELEASE = """
if redis.call('HGET', KEYS[1], 'probe') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'probe', 'probe_until')
end
"""
