"""Where the sender accounts' gate keeps its state: pace slots, day counts, pauses and probes.

Two backends with one contract (`GateBackend`): `MemoryGateBackend` for one process, and
`RedisGateBackend`, which every process of a deployment on a Redis store shares (the counts and
pauses of an account hold across processes and hosts). `reserve()` is the one call on the send
path: one round trip (one Lua script, on Redis's own clock) that answers whether a request of
an account may go now, and commits what it answers:

1. **Pause.** While the account is paused, wait until the pause ends. Once it has ended, the
   first request to ask is the probe, named by its request id, and goes (it goes again when it
   comes back, say after a pace wait; a probe out for longer than `probe_timeout` is taken for
   lost and another may go); the others wait `probe_poll` seconds and ask again, until the
   probe's outcome ends the pause (`resume`), starts a longer one (`pause`), or the probe
   turns out not to be sent at all (`release`). A pause also renews the pace: slots given out
   before it are given again after it, from its end, so the backlog does not go at once.
2. **Day.** With a daily limit reached (UTC days), wait until the next day starts.
3. **Pace.** With a rate, requests go at most one per `interval` seconds: each is given the next
   free slot (the previous one's slot plus the interval, or now), kept under its request id, so
   that a request that comes back at its slot goes without asking for another one. A request
   that goes counts for the day.

Whether a pause has ended is decided on the backend's clock (Redis's own, on Redis), never
the caller's. It answers (wait seconds, why): (0, None) go; (s, None) a pace wait; (s, text) a
pause or the daily limit, which the caller shows in the request's status. Backend errors raise
`GateError`.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import redis

from mailservice.delivery.gate_scripts import PAUSE, PAUSED, RELEASE, RESERVE
from mailservice.errors import GateError

PREFIX = "mail:gate:"
SLOT_GRACE = 3600.0  # seconds a reserved slot is kept past its time for its request to come
SLOTS_MAX = 100_000  # the memory backend's slots, before stale ones are forgotten
DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Pause:
    """An account's pause as it stands: until when (epoch seconds, the backend's clock), why,
    how long it was, and whether it has ended (its probe may be out)."""

    until: float
    reason: str
    seconds: float
    ended: bool = False


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
        passes the longer pause); the probe, if out, is over; pace slots start after it."""

    @abstractmethod
    def resume(self, account: str) -> Pause | None:
        """End the account's pause if it has ended (its probe, or any message sent since,
        was accepted); the pause that ended, else None. A pause still running stays: a
        message sent before it began says nothing of the account now."""

    @abstractmethod
    def release(self, account: str, request_id: str) -> None:
        """The probe `request_id` will not be sent (taken over, unreadable, all suppressed):
        the next request to ask is the probe."""

    @abstractmethod
    def paused(self, account: str) -> Pause | None:
        """The account's pause, ended or not, until a probe's outcome ends it."""

    def paused_many(self, accounts: list[str]) -> dict[str, Pause]:
        """The pauses of those of `accounts` that have one (one round trip on Redis)."""
        found = {account: self.paused(account) for account in accounts}
        return {account: pause for account, pause in found.items() if pause is not None}


@dataclass(slots=True)
class _Account:
    tat: float = 0.0  # the next free pace slot
    epoch: int = 0  # pauses so far: a slot of an earlier epoch is given again
    day: int = -1
    sent_today: int = 0
    pause: Pause | None = None
    probe: str = ""  # the probe's request id, while it is out
    probe_until: float = 0.0


class MemoryGateBackend(GateBackend):
    """One process's gate state."""

    def __init__(self, clock: Any = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._accounts: dict[str, _Account] = {}
        self._slots: dict[str, tuple[int, float]] = {}  # request id: (epoch, slot)

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
                if state.probe not in ("", request_id) and now < state.probe_until:
                    return probe_poll, f"{state.pause.reason} (its probe is out)"
                if state.probe != request_id:
                    state.probe, state.probe_until = request_id, now + probe_timeout
            day = int(now // DAY)
            if state.day != day:
                state.day, state.sent_today = day, 0
            if daily and state.sent_today >= daily:
                return (day + 1) * DAY - now, f"daily limit of {daily} reached"
            if interval:
                epoch, slot = self._slots.get(request_id, (-1, 0.0))
                if epoch != state.epoch or slot < now - SLOT_GRACE:
                    slot = max(now, state.tat)
                    state.tat = slot + interval
                    self._slots[request_id] = (state.epoch, slot)
                if slot > now:
                    return slot - now, None
                del self._slots[request_id]
            state.sent_today += 1
            self._forget_stale(now)
            return 0.0, None

    def _forget_stale(self, now: float) -> None:
        """Slots of requests that never came back (canceled, taken over): bounded."""
        if len(self._slots) > SLOTS_MAX:
            for request_id, (_, slot) in list(self._slots.items()):
                if slot < now - SLOT_GRACE:
                    del self._slots[request_id]

    def pause(self, account: str, seconds: float, reason: str) -> None:
        with self._lock:
            state = self._accounts.setdefault(account, _Account())
            until = self._clock() + seconds
            state.pause = Pause(until, reason, seconds)
            state.probe, state.probe_until = "", 0.0
            state.epoch += 1
            state.tat = max(state.tat, until)

    def resume(self, account: str) -> Pause | None:
        with self._lock:
            state = self._accounts.get(account)
            if state is None or state.pause is None or self._clock() < state.pause.until:
                return None
            ended, state.pause, state.probe, state.probe_until = state.pause, None, "", 0.0
            return ended

    def release(self, account: str, request_id: str) -> None:
        with self._lock:
            state = self._accounts.get(account)
            if state is not None and state.probe == request_id:
                state.probe, state.probe_until = "", 0.0

    def paused(self, account: str) -> Pause | None:
        with self._lock:
            state = self._accounts.get(account)
            if state is None or state.pause is None:
                return None
            pause = state.pause
            return Pause(pause.until, pause.reason, pause.seconds, self._clock() >= pause.until)


class RedisGateBackend(GateBackend):
    """The gate state in Redis (the store's server), shared by every process."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._reserve = client.register_script(RESERVE)
        self._pause = client.register_script(PAUSE)
        self._paused = client.register_script(PAUSED)
        self._release = client.register_script(RELEASE)

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
        args = [interval, daily, probe_timeout, probe_poll, SLOT_GRACE, request_id]
        wait, why = self._call(self._reserve, keys, args)
        return float(wait), _text(why) if why else None

    def pause(self, account: str, seconds: float, reason: str) -> None:
        self._call(self._pause, [PREFIX + account], [repr(seconds), reason])

    def resume(self, account: str) -> Pause | None:
        return _pause(self._call(self._paused, [PREFIX + account], ["1"]))

    def release(self, account: str, request_id: str) -> None:
        self._call(self._release, [PREFIX + account], [request_id])

    def paused(self, account: str) -> Pause | None:
        return _pause(self._call(self._paused, [PREFIX + account], ["0"]))

    def paused_many(self, accounts: list[str]) -> dict[str, Pause]:
        if not accounts:
            return {}
        try:
            pipe = self._client.pipeline(transaction=False)
            for account in accounts:
                self._paused(keys=[PREFIX + account], args=["0"], client=pipe)
            replies = pipe.execute()
        except redis.RedisError as exc:
            raise GateError(f"the sender gate's Redis: {exc}") from exc
        found = {account: _pause(reply) for account, reply in zip(accounts, replies, strict=True)}
        return {account: pause for account, pause in found.items() if pause is not None}

    @staticmethod
    def _call(script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return script(keys=keys, args=args)
        except redis.RedisError as exc:
            raise GateError(f"the sender gate's Redis: {exc}") from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _pause(fields: list[Any] | None) -> Pause | None:
    if not fields:
        return None
    until, reason, seconds, ended = fields
    return Pause(float(until), _text(reason or b""), float(seconds or 0), bool(int(ended)))
