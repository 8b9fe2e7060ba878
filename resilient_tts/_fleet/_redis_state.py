"""`RedisStore`: shared breaker state in Redis, every change one atomic Lua script.

Needs the optional extra: ``pip install 'resilient-tts[redis]'``. Each deployment has two
keys under the prefix (names percent-encoded, so no name can reach into another's keys)::

    resilient_tts:<pool>:<deployment>:state    hash: event, state, open_until, cooldown_until,
                                               reason, trips, streak, streak_at
    resilient_tts:<pool>:<deployment>:probes   sorted set: probe permit token -> expiry

Times in Redis are Redis's own clock (``TIME``, milliseconds) and leave it as durations
from now, so no two hosts ever compare clocks. Every key expires: the state hash
``retain`` seconds after its open time and cool-down end, the probe set when its last
permit would. The client is redis-py's synchronous one, used from one worker thread (see
`_shared_state`), with every socket operation bounded by the timeout and no retries of its
own: `SharedState` decides when to try again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .._exceptions import ConfigurationError
from ._store import ProbeAnswer, SharedRecord, StoreKey

__all__ = ["RedisStore"]

# A record outlives its open time and cool-down by this long: enough for a fleet that went
# quiet to come back and still know a deployment needs a probe before it takes traffic.
RETAIN_SECONDS = 600.0
# publish_open keeps a running open time that ends at most this much before the new one:
# a re-published open time (after an outage) must not count as news in every process.
_KEEP_TOLERANCE_MS = 250

_PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function int(n)
  return string.format('%.0f', n)
end
local function num(v)
  return tonumber(v) or 0
end
local function record(state_key, probes_key, now, window_ms)
  local h = redis.call('HMGET', state_key, 'event', 'state', 'open_until', 'cooldown_until',
                       'reason', 'trips', 'streak', 'streak_at')
  local state = h[2] or 'closed'
  local open_ms = 0
  if state == 'open' then open_ms = math.max(0, num(h[3]) - now) end
  local streak = num(h[7])
  if now - num(h[8]) > window_ms then streak = 0 end
  local probes = redis.call('ZCOUNT', probes_key, '(' .. int(now), '+inf')
  return {h[1] or '', state, open_ms, math.max(0, num(h[4]) - now), h[5] or '',
          num(h[6]), streak, probes}
end
local function keep(state_key, now, retain_ms)
  local h = redis.call('HMGET', state_key, 'open_until', 'cooldown_until')
  local last = math.max(now, num(h[1]), num(h[2]))
  redis.call('PEXPIRE', state_key, int(last - now + retain_ms))
end
"""

# KEYS: state1, probes1, state2, probes2, ...  ARGV: window_ms1, window_ms2, ...
_READ = """
local now = now_ms()
local out = {}
for i = 1, #KEYS, 2 do
  out[#out + 1] = record(KEYS[i], KEYS[i + 1], now, num(ARGV[(i + 1) / 2]))
end
return out
"""

# ARGV: seconds_ms, reason, event, trip (0/1), window_ms, retain_ms, tolerance_ms
_OPEN = """
local now = now_ms()
local until_ms = now + num(ARGV[1])
local h = redis.call('HMGET', KEYS[1], 'state', 'open_until', 'trips')
local running = h[1] == 'open' and num(h[2]) > now
if not (running and num(h[2]) >= until_ms - num(ARGV[7])) then
  local trips = num(h[3])
  if ARGV[4] == '1' and not running then trips = trips + 1 end
  redis.call('HSET', KEYS[1], 'state', 'open', 'open_until', int(until_ms), 'event', ARGV[3],
             'reason', ARGV[2], 'trips', int(trips), 'streak', 0)
  -- a new open time: permits of the last half-open period are void
  redis.call('DEL', KEYS[2])
end
keep(KEYS[1], now, num(ARGV[6]))
return record(KEYS[1], KEYS[2], now, num(ARGV[5]))
"""

# ARGV: reason, event, window_ms, retain_ms
_CLOSE = """
local now = now_ms()
redis.call('HSET', KEYS[1], 'state', 'closed', 'open_until', 0, 'event', ARGV[2],
           'reason', ARGV[1], 'trips', 0, 'streak', 0)
redis.call('DEL', KEYS[2])
keep(KEYS[1], now, num(ARGV[4]))
return record(KEYS[1], KEYS[2], now, num(ARGV[3]))
"""

# ARGV: seconds_ms, window_ms, retain_ms
_COOLDOWN = """
local now = now_ms()
local until_ms = now + num(ARGV[1])
if until_ms > num(redis.call('HGET', KEYS[1], 'cooldown_until')) then
  redis.call('HSET', KEYS[1], 'cooldown_until', int(until_ms))
end
keep(KEYS[1], now, num(ARGV[3]))
return record(KEYS[1], KEYS[2], now, num(ARGV[2]))
"""

# ARGV: window_ms, retain_ms
_FAILURE = """
local now = now_ms()
local h = redis.call('HMGET', KEYS[1], 'state', 'streak', 'streak_at')
if h[1] ~= 'open' then
  local streak = num(h[2])
  if now - num(h[3]) > num(ARGV[1]) then streak = 0 end
  redis.call('HSET', KEYS[1], 'streak', int(streak + 1), 'streak_at', int(now))
  keep(KEYS[1], now, num(ARGV[2]))
end
return record(KEYS[1], KEYS[2], now, num(ARGV[1]))
"""

# ARGV: window_ms
_SUCCESS = """
local now = now_ms()
if num(redis.call('HGET', KEYS[1], 'streak')) > 0 then
  redis.call('HSET', KEYS[1], 'streak', 0)
end
return record(KEYS[1], KEYS[2], now, num(ARGV[1]))
"""

# KEYS: state, probes  ARGV: token, limit, ttl_ms, known_event, forced (0/1)
# {1, 0}: granted; {0, 0}: every permit taken; {-1, 0}: closed by a change the asker has not
# seen; {2, ms}: re-opened for ms more by a failed probe (a forced probe may go anyway).
_ACQUIRE_PROBE = """
local now = now_ms()
local h = redis.call('HMGET', KEYS[1], 'state', 'event', 'open_until')
if h[1] == 'closed' and h[2] and h[2] ~= ARGV[4] then
  return {-1, 0}
end
if h[1] == 'open' and num(h[3]) > now and ARGV[5] ~= '1' then
  return {2, num(h[3]) - now}
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', int(now))
if redis.call('ZCARD', KEYS[2]) < num(ARGV[2]) then
  redis.call('ZADD', KEYS[2], int(now + num(ARGV[3])), ARGV[1])
  redis.call('PEXPIRE', KEYS[2], int(num(ARGV[3])))
  return {1, 0}
end
return {0, 0}
"""


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


class RedisStore:
    """`SharedStore` on one Redis server (or a primary), through redis-py's sync client.

    ::

        store = RedisStore.from_url("redis://:password@10.0.0.7:6379/0", timeout=0.1)

    Redis Cluster is not supported: one read covers every deployment in one script.
    """

    def __init__(
        self, client: redis.Redis, *, prefix: str = "resilient_tts", retain: float = RETAIN_SECONDS
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._retain_ms = _ms(retain)
        self._read = client.register_script(_PRELUDE + _READ)
        self._open = client.register_script(_PRELUDE + _OPEN)
        self._close = client.register_script(_PRELUDE + _CLOSE)
        self._cooldown = client.register_script(_PRELUDE + _COOLDOWN)
        self._failure = client.register_script(_PRELUDE + _FAILURE)
        self._success = client.register_script(_PRELUDE + _SUCCESS)
        self._acquire = client.register_script(_PRELUDE + _ACQUIRE_PROBE)

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = "resilient_tts", timeout: float = 0.1
    ) -> RedisStore:
        """A store for ``redis://``, ``rediss://`` or ``unix://`` URL; connects on first use."""
        try:
            client = redis.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),  # SharedState decides when to try again
                decode_responses=True,
                client_name="resilient-tts",
            )
        except ValueError:
            # redis-py's message may quote the URL, which may hold a password.
            raise ConfigurationError(
                "RESILIENT_TTS_REDIS_URL: not a usable Redis URL; expected "
                "redis://[[user]:password@]host[:port][/db], rediss://... or unix://..."
            ) from None
        return cls(client, prefix=prefix)

    def __repr__(self) -> str:
        return f"<RedisStore prefix={self._prefix!r}>"  # never the URL: it may hold a password

    def keys(self, key: StoreKey) -> list[str]:
        """The state hash and the probe set of one deployment."""
        base = f"{self._prefix}:{quote(key.pool, safe='')}:{quote(key.deployment, safe='')}"
        return [f"{base}:state", f"{base}:probes"]

    def read(self, keys: Sequence[StoreKey]) -> list[SharedRecord]:
        if not keys:
            return []
        names = [name for key in keys for name in self.keys(key)]
        windows = [_ms(key.streak_window) for key in keys]
        rows = cast(list[list[Any]], self._read(keys=names, args=windows))
        return [_record(row) for row in rows]

    def publish_open(
        self, key: StoreKey, seconds: float, reason: str, event: str, *, trip: bool
    ) -> SharedRecord:
        args: list[str | int] = [
            _ms(seconds),
            reason,
            event,
            int(trip),
            _ms(key.streak_window),
            self._retain_ms,
            _KEEP_TOLERANCE_MS,
        ]
        return _record(self._open(keys=self.keys(key), args=args))

    def publish_closed(self, key: StoreKey, reason: str, event: str) -> SharedRecord:
        args: list[str | int] = [reason, event, _ms(key.streak_window), self._retain_ms]
        return _record(self._close(keys=self.keys(key), args=args))

    def publish_cooldown(self, key: StoreKey, seconds: float) -> SharedRecord:
        args = [_ms(seconds), _ms(key.streak_window), self._retain_ms]
        return _record(self._cooldown(keys=self.keys(key), args=args))

    def record_failure(self, key: StoreKey) -> SharedRecord:
        return _record(
            self._failure(keys=self.keys(key), args=[_ms(key.streak_window), self._retain_ms])
        )

    def record_success(self, key: StoreKey) -> SharedRecord:
        return _record(self._success(keys=self.keys(key), args=[_ms(key.streak_window)]))

    def acquire_probe(
        self,
        key: StoreKey,
        token: str,
        limit: int,
        ttl: float,
        known_event: str | None,
        *,
        forced: bool,
    ) -> tuple[ProbeAnswer, float]:
        args: list[str | int] = [token, limit, _ms(ttl), known_event or "", int(forced)]
        code, open_ms = cast(list[int], self._acquire(keys=self.keys(key), args=args))
        answers: dict[int, ProbeAnswer] = {1: "granted", 0: "taken", -1: "closed", 2: "open"}
        return answers[int(code)], int(open_ms) / 1000

    def release_probe(self, key: StoreKey, token: str) -> None:
        self._client.zrem(self.keys(key)[1], token)

    def close(self) -> None:
        self._client.close()


def _record(row: Any) -> SharedRecord:
    event, state, open_ms, cooldown_ms, reason, trips, streak, probes = row
    return SharedRecord(
        event=event or None,
        state="open" if state == "open" else "closed",
        open_remaining=int(open_ms) / 1000,
        cooldown_remaining=int(cooldown_ms) / 1000,
        reason=str(reason),
        trips=int(trips),
        streak=int(streak),
        probes=int(probes),
    )
