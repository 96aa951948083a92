"""Where the sender accounts' gate keeps its state: pace slots, day counts, pauses and probes.

Two backends with one contract (`GateBackend`): `MemoryGateBackend` for one process, and
`RedisGateBackend`, which every process of a deployment on a Redis store shares (the counts and
pauses of an account hold across processes and hosts). `reserve()` is the one call on the send
path: one round trip (one Lua script, on Redis's own clock) that answers whether a request of
an account may go now, and commits what it answers:

1. **Pause.** While the account is paused, wait until the pause ends. Once it has ended, the
   first request to ask is the probe and goes (a probe out for longer than `probe_timeout` is
   taken for lost and another may go); the others wait `probe_poll` seconds and ask again, until
   the probe's outcome ends the pause (`resume`) or starts a longer one (`pause`).
2. **Day.** With a daily limit reached (UTC days), wait until the next day starts.
3. **Pace.** With a rate, requests go at most one per `interval` seconds: each is given the next
   free slot (the previous one's slot plus the interval, or now), kept under its request id, so
   that a request that comes back at its slot goes without asking for another one. A request
   that goes counts for the day.

It answers (wait seconds, why): (0, None) go; (s, None) a pace wait; (s, text) a pause or the
daily limit, which the caller shows in the request's status. Backend errors raise `GateError`.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import redis

from mailservice.errors import GateError

PREFIX = "mail:gate:"
SLOT_GRACE = 3600.0  # seconds a reserved slot is kept past its time for its request to come
DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Pause:
    """An account's pause as it stands: until when (epoch seconds), why, how long it was."""

    until: float
    reason: str
    seconds: float


class GateBackend(ABC):
    @abstractmethod
    def reserve(
        self,
        account: str,
        request_id: str,
        interval: float,
        daily: int,
        probe_timeout: float,
        probe_poll: float,
    ) -> tuple[float, str | None]:
        """See the module's docstring; `interval` 0: no rate, `daily` 0: no daily limit."""

    @abstractmethod
    def pause(self, account: str, seconds: float, reason: str) -> None:
        """Pause the account for `seconds` from now (a probe's failure too: the caller
        passes the longer pause); the probe, if out, is over."""

    @abstractmethod
    def resume(self, account: str) -> Pause | None:
        """End the account's pause (its probe was answered); the pause that ended, if any."""

    @abstractmethod
    def paused(self, account: str) -> Pause | None:
        """The account's pause, ended or not, until a probe's outcome ends it."""


@dataclass(slots=True)
class _Account:
    tat: float = 0.0  # the next free pace slot
    day: int = -1
    sent_today: int = 0
    pause: Pause | None = None
    probe_until: float = 0.0


class MemoryGateBackend(GateBackend):
    """One process's gate state."""

    def __init__(self, clock: Any = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._accounts: dict[str, _Account] = {}
        self._slots: dict[str, float] = {}

    def reserve(
        self,
        account: str,
        request_id: str,
        interval: float,
        daily: int,
        probe_timeout: float,
        probe_poll: float,
    ) -> tuple[float, str | None]:
        with self._lock:
            now = self._clock()
            state = self._accounts.setdefault(account, _Account())
            if state.pause is not None:
                if now < state.pause.until:
                    return state.pause.until - now, state.pause.reason
                if now < state.probe_until:
                    return probe_poll, f"{state.pause.reason} (its probe is out)"
                state.probe_until = now + probe_timeout  # this request is the probe
            day = int(now // DAY)
            if state.day != day:
                state.day, state.sent_today = day, 0
            if daily and state.sent_today >= daily:
                return (day + 1) * DAY - now, f"daily limit of {daily} reached"
            if interval:
                slot = self._slots.get(request_id)
                if slot is None or slot < now - SLOT_GRACE:
                    slot = max(now, state.tat)
                    state.tat = slot + interval
                    self._slots[request_id] = slot
                if slot > now:
                    return slot - now, None
                del self._slots[request_id]
            state.sent_today += 1
            return 0.0, None

    def pause(self, account: str, seconds: float, reason: str) -> None:
        with self._lock:
            state = self._accounts.setdefault(account, _Account())
            state.pause = Pause(self._clock() + seconds, reason, seconds)
            state.probe_until = 0.0

    def resume(self, account: str) -> Pause | None:
        with self._lock:
            state = self._accounts.get(account)
            if state is None or state.pause is None:
                return None
            ended, state.pause, state.probe_until = state.pause, None, 0.0
            return ended

    def paused(self, account: str) -> Pause | None:
        with self._lock:
            state = self._accounts.get(account)
            return state.pause if state is not None else None


# KEYS: the account's hash, its day counter's prefix, the request's slot key.
# ARGV: interval, daily, probe_timeout, probe_poll, slot grace (all seconds or counts).
# Redis's own clock (TIME), so that processes on hosts whose clocks differ agree.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval, daily = tonumber(ARGV[1]), tonumber(ARGV[2])
local probe_timeout, probe_poll = tonumber(ARGV[3]), tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'until', 'reason', 'probe_until', 'tat')
if state[1] then
  local paused_until = tonumber(state[1])
  if now < paused_until then
    return {tostring(paused_until - now), state[2]}
  end
  if state[3] and now < tonumber(state[3]) then
    return {tostring(probe_poll), state[2] .. ' (its probe is out)'}
  end
  redis.call('HSET', KEYS[1], 'probe_until', tostring(now + probe_timeout))
end
local day = math.floor(now / 86400)
local day_key = KEYS[2] .. day
if daily > 0 and tonumber(redis.call('GET', day_key) or '0') >= daily then
  return {tostring((day + 1) * 86400 - now), 'daily limit of ' .. daily .. ' reached'}
end
if interval > 0 then
  local slot = tonumber(redis.call('GET', KEYS[3]) or '')
  if not slot then
    slot = math.max(now, tonumber(state[4] or '0'))
    redis.call('HSET', KEYS[1], 'tat', tostring(slot + interval))
    redis.call('SET', KEYS[3], tostring(slot), 'PX',
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


class RedisGateBackend(GateBackend):
    """The gate state in Redis (the store's server), shared by every process."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._reserve = client.register_script(_RESERVE)

    def reserve(
        self,
        account: str,
        request_id: str,
        interval: float,
        daily: int,
        probe_timeout: float,
        probe_poll: float,
    ) -> tuple[float, str | None]:
        keys = [PREFIX + account, f"{PREFIX}{account}:day:", f"{PREFIX}slot:{request_id}"]
        args = [interval, daily, probe_timeout, probe_poll, SLOT_GRACE]
        try:
            wait, why = self._reserve(keys=keys, args=args)
        except redis.RedisError as exc:
            raise GateError(f"the sender gate's Redis: {exc}") from exc
        return float(wait), _text(why) if why else None

    def pause(self, account: str, seconds: float, reason: str) -> None:
        try:
            (now, micros) = self._client.time()
            until = now + micros / 1e6 + seconds
            self._client.hset(
                PREFIX + account,
                mapping={"until": repr(until), "reason": reason, "seconds": repr(seconds)},
            )
            self._client.hdel(PREFIX + account, "probe_until")
        except redis.RedisError as exc:
            raise GateError(f"the sender gate's Redis: {exc}") from exc

    def resume(self, account: str) -> Pause | None:
        key = PREFIX + account
        try:
            pipe = self._client.pipeline()
            pipe.hmget(key, "until", "reason", "seconds")
            pipe.hdel(key, "until", "reason", "seconds", "probe_until")
            fields, _ = pipe.execute()
        except redis.RedisError as exc:
            raise GateError(f"the sender gate's Redis: {exc}") from exc
        return _pause(fields)

    def paused(self, account: str) -> Pause | None:
        try:
            fields = self._client.hmget(PREFIX + account, "until", "reason", "seconds")
        except redis.RedisError as exc:
            raise GateError(f"the sender gate's Redis: {exc}") from exc
        return _pause(fields)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _pause(fields: list[Any]) -> Pause | None:
    until, reason, seconds = fields
    if until is None:
        return None
    return Pause(float(until), _text(reason or b""), float(seconds or 0))
