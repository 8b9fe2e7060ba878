"""Retry maths: jittered backoff delays, ``Retry-After`` parsing, a pool-wide retry budget.

Pure: nothing here sleeps. The `backoff` package computes the delay sequence well, but its
decorators sleep with ``asyncio.sleep`` and jitter server hints downwards, so we take only
its wait generator and leave the sleeping (and the deadline) to the failover loop::

    delays = backoff_delays()                       # 0.05 s, 0.1 s, ... capped at 2 s, jittered
    hint = parse_retry_after(response.headers)      # None, or seconds the server asked for
    await anyio.sleep(retry_wait(hint, next(delays)))

    budget = RetryBudget(clock=anyio.current_time)  # one per pool
    budget.deposit()                                # once per request
    if budget.try_spend():                          # before each retry
        ...
"""

from __future__ import annotations

import email.utils
import math
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC

import backoff

__all__ = [
    "RetryBudget",
    "RetryPolicy",
    "backoff_delays",
    "parse_retry_after",
    "retry_wait",
]

# A hint longer than this is a misconfigured server, not advice worth following.
_MAX_HINT_SECONDS = 86_400.0

# RFC 9110 §10.2.3: delay-seconds = 1*DIGIT. We also accept a fraction ("1.5"), which
# OpenAI-compatible servers send and the openai SDK accepts; never a sign or exponent.
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def _check(name: str, value: float, *, minimum: float, allow_minimum: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if value < minimum or (value == minimum and not allow_minimum):
        relation = ">=" if allow_minimum else ">"
        raise ValueError(f"{name} must be {relation} {minimum}, got {value!r}")


def _check_backoff(base: float, factor: float, max_delay: float) -> None:
    _check("base", base, minimum=0.0, allow_minimum=False)
    _check("factor", factor, minimum=1.0)
    _check("max_delay", max_delay, minimum=0.0)


def backoff_delays(
    *,
    base: float = 0.05,
    factor: float = 2.0,
    max_delay: float = 2.0,
    random: Callable[[], float] = random.random,
) -> Iterator[float]:
    """Endless full-jitter exponential delays: the n-th (from 0) is in [0, cap_n).

    ``cap_n = min(base * factor**n, max_delay)``; each delay is ``cap_n * random()`` (the
    "full jitter" of AWS's backoff study, as `backoff.full_jitter` computes it, but with the
    injected ``random`` so tests are deterministic)::

        delays = backoff_delays()                          # caps 0.05, 0.1, 0.2, ... 2.0
        delays = backoff_delays(base=0.5, max_delay=8.0)   # caps 0.5, 1, 2, 4, 8, 8, ...
        first = next(delays)
    """
    _check_backoff(base, factor, max_delay)
    for cap in backoff.expo(base=factor, factor=base, max_value=max_delay):
        if cap is None:  # backoff's generators yield None first, to be primed by .send()
            continue
        # backoff.full_jitter is random.uniform(0, cap), i.e. cap * random.random().
        yield float(cap) * random()


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """``name`` (lower case) from any mapping: case-insensitive ones first, then a scan."""
    value = headers.get(name)
    if value is None:
        for key, candidate in headers.items():
            if key.lower() == name:
                return candidate
    return value


def _seconds(value: float) -> float | None:
    return value if 0.0 <= value <= _MAX_HINT_SECONDS else None


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds a server asked us to wait, or None if it did not say (or said nonsense).

    ``retry-after-ms`` (milliseconds, OpenAI and Azure) wins over ``Retry-After``, which is
    delay-seconds or an HTTP-date (RFC 9110 §10.2.3); a date in the past means 0.0. Invalid,
    negative and absurd (over a day) values give None. ``now`` is the wall clock for dates,
    seconds since the epoch (default `time.time()`). Header names are case-insensitive::

        parse_retry_after(response.headers)                       # httpx.Headers
        parse_retry_after({"Retry-After": "2"})                   # 2.0
        parse_retry_after({"retry-after-ms": "1500"})             # 1.5
        parse_retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})   # 0.0
    """
    millis = _header(headers, "retry-after-ms")
    if millis is not None and _DECIMAL.fullmatch(millis := millis.strip()):
        hint = _seconds(float(millis) / 1000.0)
        if hint is not None:
            return hint
    value = _header(headers, "retry-after")
    if value is None:
        return None
    value = value.strip()
    if _DECIMAL.fullmatch(value):
        return _seconds(float(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:  # "-0000" parses naive; HTTP-dates are always UTC
            when = when.replace(tzinfo=UTC)
        delay = when.timestamp() - (time.time() if now is None else now)
    except (ValueError, OverflowError):  # not a date, or one datetime cannot hold
        return None
    return _seconds(max(delay, 0.0))


def retry_wait(hint: float | None, backoff_delay: float) -> float:
    """Seconds to wait before retrying: the server's hint is a floor, never cut by jitter.

    ``retry_wait(None, 0.07)`` is 0.07; ``retry_wait(2.0, 0.07)`` is 2.0.
    """
    return backoff_delay if hint is None else max(hint, backoff_delay)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How retries back off and how many a pool may spend, as one value for configuration.

    ::

        RetryPolicy()                                 # 0.05 s doubling to 2 s; 20% budget
        RetryPolicy(base=0.2, max_delay=5.0)
        RetryPolicy(budget_ratio=0.1, budget_min_per_second=0.5, budget_capacity=5.0)

        delays = policy.delays()
        budget = policy.create_budget(clock=anyio.current_time)

    Invalid values raise `ValueError`.
    """

    base: float = 0.05
    """First backoff cap, seconds."""
    factor: float = 2.0
    """Each backoff cap is this many times the previous one (>= 1)."""
    max_delay: float = 2.0
    """Backoff caps stop growing here, seconds."""
    budget_ratio: float = 0.2
    """Retry tokens each request earns: 0.2 allows one retry per five requests."""
    budget_min_per_second: float = 1.0
    """Retry tokens earned per second regardless of traffic, so quiet pools can retry."""
    budget_capacity: float = 10.0
    """Most retry tokens a pool can save up (below 1 disables retries)."""

    def __post_init__(self) -> None:
        _check_backoff(self.base, self.factor, self.max_delay)
        _check_budget(self.budget_ratio, self.budget_min_per_second, self.budget_capacity)

    def delays(self, *, random: Callable[[], float] = random.random) -> Iterator[float]:
        """A fresh `backoff_delays` sequence with this policy's base, factor and cap."""
        return backoff_delays(
            base=self.base, factor=self.factor, max_delay=self.max_delay, random=random
        )

    def create_budget(self, *, clock: Callable[[], float]) -> RetryBudget:
        """A new, full `RetryBudget` with this policy's ratio, refill rate and capacity."""
        return RetryBudget(
            ratio=self.budget_ratio,
            min_per_second=self.budget_min_per_second,
            capacity=self.budget_capacity,
            clock=clock,
        )


def _check_budget(ratio: float, min_per_second: float, capacity: float) -> None:
    _check("budget_ratio", ratio, minimum=0.0)
    _check("budget_min_per_second", min_per_second, minimum=0.0)
    _check("budget_capacity", capacity, minimum=0.0)


class RetryBudget:
    """Pool-wide token bucket that stops retry storms (Finagle's RetryBudget, gRPC throttling).

    Every request deposits ``ratio`` tokens; every retry, or failover that retries, spends
    one. ``min_per_second`` tokens also trickle in each second so low traffic can still
    retry, and the balance never exceeds ``capacity``. It starts full::

        budget = RetryBudget(clock=anyio.current_time)           # 20% of traffic, 1/s floor
        budget = RetryBudget(ratio=0.1, capacity=5.0, clock=anyio.current_time)
        budget.deposit()
        if budget.try_spend():
            ...  # retry

    When a deployment dies under load, retries are capped at about ``ratio`` of requests
    instead of multiplying the load on the deployments that are left.
    """

    __slots__ = ("_balance", "_capacity", "_clock", "_last", "_min_per_second", "_ratio")

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        min_per_second: float = 1.0,
        capacity: float = 10.0,
        clock: Callable[[], float],
    ) -> None:
        _check_budget(ratio, min_per_second, capacity)
        self._ratio = float(ratio)
        self._min_per_second = float(min_per_second)
        self._capacity = float(capacity)
        self._clock = clock
        self._balance = self._capacity
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(now - self._last, 0.0)  # tolerate a clock that steps back
        self._last = now
        self._balance = min(self._capacity, self._balance + elapsed * self._min_per_second)

    def deposit(self) -> None:
        """Earn ``ratio`` tokens; call once per request (first attempts, not retries)."""
        self._refill()
        self._balance = min(self._capacity, self._balance + self._ratio)

    def try_spend(self) -> bool:
        """Spend one token and return True, or return False if less than one is left."""
        self._refill()
        if self._balance < 1.0:
            return False
        self._balance -= 1.0
        return True

    @property
    def balance(self) -> float:
        """Tokens available now, refill included."""
        self._refill()
        return self._balance

    def __repr__(self) -> str:
        return (
            f"<RetryBudget balance={self._balance:.2f} ratio={self._ratio} "
            f"min_per_second={self._min_per_second} capacity={self._capacity}>"
        )
