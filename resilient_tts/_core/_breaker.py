"""A circuit breaker per deployment: closed, open, half-open (SPEC §4).

A pure state machine in the manner of resilience4j's ``CircuitBreaker``: no I/O, no timers,
no sleeping. Time comes from an injected ``clock`` (monotonic seconds; the client passes
``anyio.current_time``) and jitter from an injected ``random``, so tests drive it with a
fake clock. Transitions are lazy: an open breaker becomes half-open when it is next asked
after its open time has passed.

Usual use, one attempt at one deployment::

    breaker = CircuitBreaker(BreakerPolicy(open_seconds=5.0), clock=anyio.current_time)
    permit = breaker.acquire()
    if permit is None:
        continue  # open, cooling down, or half-open with no probe slot free: next deployment
    try:
        audio = await attempt()
    except DeploymentFailed:
        breaker.record_failure(permit)
    else:
        breaker.record_success(permit)
    finally:
        breaker.release(permit)  # cancelled: frees the permit, never counts; no-op if settled

Every permit is settled exactly once with `record_success`, `record_failure`,
`record_throttle` or `release`; later settle calls are no-ops. A permit taken before the
breaker tripped, was forced open or was reset is stale: settling it never changes the state.
"""

from __future__ import annotations

import enum
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "BreakerPolicy",
    "BreakerSnapshot",
    "BreakerState",
    "BreakerTransition",
    "CircuitBreaker",
    "Permit",
]

# The sliding window keeps at most about this many aggregated entries, whatever the traffic:
# calls closer together than window_seconds / _WINDOW_SLOTS share one entry.
_WINDOW_SLOTS = 100


class BreakerState(enum.StrEnum):
    """Where a breaker stands: `CLOSED` admits all, `OPEN` none, `HALF_OPEN` a few probes."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


def _check_int(name: str, value: int, *, minimum: int) -> None:
    # bool is an int subclass; `consecutive_failures=True` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


def _check_float(
    name: str, value: float, *, minimum: float = 0.0, allow_minimum: bool = True
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if value < minimum or (value == minimum and not allow_minimum):
        relation = ">=" if allow_minimum else ">"
        raise ValueError(f"{name} must be {relation} {minimum}, got {value!r}")


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a breaker trips, how long it stays open, and how it recovers.

    The defaults suit most deployments::

        BreakerPolicy()                                   # 5 failures in a row, or 50% of 10+
        BreakerPolicy(open_seconds=10.0)                  # RESILIENT_TTS_BREAKER_OPEN_SECONDS
        BreakerPolicy(consecutive_failures=3, failure_rate=0.25, minimum_calls=20)
        BreakerPolicy(half_open_probes=2, jitter=0.0)     # two probes, exact open times

    The n-th consecutive trip opens the breaker for
    ``min(open_seconds * open_multiplier ** (n - 1), max_open_seconds) * (1 + jitter * r)``
    seconds with ``r`` in [0, 1): the cap applies before jitter, and jitter only lengthens.
    Invalid values raise `ValueError`.
    """

    consecutive_failures: int = 5
    """Trip after this many failures in a row (the fast path when traffic is low)."""
    failure_rate: float = 0.5
    """... or when failures / calls over the window reach this, in (0, 1]."""
    window_seconds: float = 30.0
    """Length of the sliding time window for the failure rate."""
    minimum_calls: int = 10
    """The failure rate trips only with at least this many calls in the window."""
    open_seconds: float = 5.0
    """Open time after the first trip (RESILIENT_TTS_BREAKER_OPEN_SECONDS)."""
    # A recovered server waits at most a minute (plus jitter) for its probe.
    max_open_seconds: float = 60.0
    """Cap on the open time as it grows over consecutive trips (before jitter)."""
    open_multiplier: float = 2.0
    """The open time grows by this factor on each consecutive trip."""
    jitter: float = 0.2
    """Open times are lengthened by up to this fraction, so a fleet does not probe in step."""
    half_open_probes: int = 1
    """Probe permits in flight at once while half-open."""
    force_open_seconds: float = 300.0
    """Open time after `CircuitBreaker.force_open` (401, 403, 404, unknown model)."""

    def __post_init__(self) -> None:
        _check_int("consecutive_failures", self.consecutive_failures, minimum=1)
        _check_float("failure_rate", self.failure_rate, allow_minimum=False)
        if self.failure_rate > 1.0:
            raise ValueError(f"failure_rate must be in (0, 1], got {self.failure_rate!r}")
        _check_float("window_seconds", self.window_seconds, allow_minimum=False)
        _check_int("minimum_calls", self.minimum_calls, minimum=1)
        _check_float("open_seconds", self.open_seconds, allow_minimum=False)
        _check_float("max_open_seconds", self.max_open_seconds, allow_minimum=False)
        if self.max_open_seconds < self.open_seconds:
            raise ValueError(
                f"max_open_seconds ({self.max_open_seconds!r}) must be >= "
                f"open_seconds ({self.open_seconds!r})"
            )
        _check_float("open_multiplier", self.open_multiplier, minimum=1.0)
        _check_float("jitter", self.jitter)
        _check_int("half_open_probes", self.half_open_probes, minimum=1)
        _check_float("force_open_seconds", self.force_open_seconds, allow_minimum=False)

    def open_time(self, trip: int, draw: float = 0.0) -> float:
        """Seconds the `trip`-th consecutive trip (1-based) stays open, for a draw in [0, 1).

        ``policy.open_time(1)`` is ``open_seconds``; ``policy.open_time(3, 0.5)`` is
        ``min(open_seconds * open_multiplier**2, max_open_seconds) * (1 + jitter * 0.5)``.
        """
        if trip < 1:
            raise ValueError(f"trip counts from 1, got {trip!r}")
        try:
            grown = self.open_seconds * self.open_multiplier ** (trip - 1)
        except OverflowError:  # float ** int raises instead of returning inf
            grown = math.inf
        return min(grown, self.max_open_seconds) * (1.0 + self.jitter * draw)


@dataclass(frozen=True, slots=True)
class BreakerTransition:
    """One change of a breaker's state, handed to ``on_transition``.

    ``open_until`` is the clock time the breaker stays open until when ``new`` is `OPEN`,
    else None. A breaker that is re-opened while open (a forced probe failed, or
    `CircuitBreaker.force_open` while open) reports ``old == new == OPEN``.
    """

    old: BreakerState
    new: BreakerState
    at: float
    reason: str
    open_until: float | None


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """A breaker's state and counters at one instant, for health pages and metrics.

    ``open_until`` is set only while `OPEN` and ``cooldown_until`` only while a cool-down is
    running. The counters describe the current closed period (kept while open, so they
    explain the trip) and are cleared when the breaker closes again.
    """

    state: BreakerState
    open_until: float | None
    cooldown_until: float | None
    consecutive_failures: int
    failure_rate: float
    calls_in_window: int
    trips: int
    probes_in_flight: int
    throttles_in_window: int


class Permit:
    """Leave to make one call through a `CircuitBreaker`; from `CircuitBreaker.acquire`.

    Settle it exactly once with ``record_success``, ``record_failure``, ``record_throttle`` or
    ``release``; further settle calls are no-ops. ``probe`` is True when it was admitted as
    a probe (half-open, or ``acquire(force=True)`` while open).
    """

    __slots__ = ("_breaker", "_epoch", "_probe", "_settled")

    def __init__(self, breaker: CircuitBreaker, epoch: int, probe: bool) -> None:
        self._breaker = breaker
        self._epoch = epoch
        self._probe = probe
        self._settled = False

    @property
    def probe(self) -> bool:
        """True if this permit was admitted as a probe of a recovering deployment."""
        return self._probe

    @property
    def settled(self) -> bool:
        """True once the permit was recorded or released."""
        return self._settled

    def __repr__(self) -> str:
        return f"<Permit probe={self._probe} settled={self._settled}>"


class _Slot:
    """Calls merged into one window entry: those within a resolution step of ``first``."""

    __slots__ = ("calls", "failures", "first", "last")

    def __init__(self, now: float) -> None:
        self.first = now
        self.last = now
        self.calls = 0
        self.failures = 0


class _SlidingCounts:
    """Calls and failures over the last ``seconds``, pruned lazily, in bounded memory.

    A call made at ``t`` is counted while ``now < t + seconds``. Calls less than
    ``seconds / _WINDOW_SLOTS`` apart share an entry that expires with its latest call, so a
    call may stay counted up to 1% of the window longer, never shorter.
    """

    __slots__ = ("_entries", "_resolution", "_seconds", "calls", "failures")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._resolution = seconds / _WINDOW_SLOTS
        self._entries: deque[_Slot] = deque()
        self.calls = 0
        self.failures = 0

    def add(self, now: float, *, failed: bool = False) -> None:
        self.prune(now)
        if self._entries and now - self._entries[-1].first < self._resolution:
            slot = self._entries[-1]
            slot.last = max(slot.last, now)
        else:
            slot = _Slot(now)
            self._entries.append(slot)
        slot.calls += 1
        self.calls += 1
        if failed:
            slot.failures += 1
            self.failures += 1

    def prune(self, now: float) -> None:
        while self._entries and self._entries[0].last + self._seconds <= now:
            slot = self._entries.popleft()
            self.calls -= slot.calls
            self.failures -= slot.failures

    def clear(self) -> None:
        self._entries.clear()
        self.calls = 0
        self.failures = 0

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(slots=True)
class _Counters:
    window: _SlidingCounts
    throttles: _SlidingCounts
    consecutive_failures: int = 0
    trips: int = 0  # consecutive trips since the breaker last closed; grows the open time
    probes_in_flight: int = 0
    epoch: int = 0  # bumped whenever outstanding permits must stop counting
    open_until: float = 0.0
    cooldown_until: float | None = None


class CircuitBreaker:
    """Closed / open / half-open breaker for one deployment, driven by an injected clock.

    ::

        breaker = CircuitBreaker(clock=anyio.current_time)
        breaker = CircuitBreaker(
            BreakerPolicy(open_seconds=10.0),
            clock=anyio.current_time,
            on_transition=lambda t: log.warning("%s -> %s: %s", t.old, t.new, t.reason),
        )

    Trips on ``consecutive_failures`` failures in a row, or when the failure rate over
    ``window_seconds`` reaches ``failure_rate`` with at least ``minimum_calls`` calls. Open,
    it rejects `acquire` until its open time has passed, then turns half-open and admits up
    to ``half_open_probes`` probes: a probe success closes it, a probe failure re-opens it
    for longer. `cool_down` (a ``Retry-After`` hint) rejects `acquire` for a while without
    touching the state. ``on_transition`` is called synchronously after each change with
    one of the reasons "consecutive failures", "failure rate", "probe failed",
    "probe succeeded", "forced open: <reason>", "reset", "open time elapsed".

    ``on_transition`` is a plain attribute, so a pool may also set it after construction.
    Not thread-safe: use it from one event loop, as the client does.
    """

    __slots__ = ("_c", "_clock", "_policy", "_random", "_state", "on_transition")

    def __init__(
        self,
        policy: BreakerPolicy = BreakerPolicy(),  # frozen, so one shared default is safe
        *,
        clock: Callable[[], float],
        random: Callable[[], float] = random.random,
        on_transition: Callable[[BreakerTransition], None] | None = None,
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._random = random
        self.on_transition = on_transition
        self._state = BreakerState.CLOSED
        self._c = _Counters(
            window=_SlidingCounts(policy.window_seconds),
            throttles=_SlidingCounts(policy.window_seconds),
        )

    @property
    def policy(self) -> BreakerPolicy:
        """The policy this breaker was built with."""
        return self._policy

    @property
    def state(self) -> BreakerState:
        """The current state; an `OPEN` breaker whose open time has passed is `HALF_OPEN`."""
        self._advance(self._clock())
        return self._state

    def acquire(self, *, force: bool = False) -> Permit | None:
        """A permit to make one call, or None if the call must go elsewhere.

        None while open, while cooling down, or while half-open with every probe permit
        taken. ``force=True`` also admits a probe while open (when every deployment of a pool
        is open, the pool tries the one closest to reopening anyway); it still respects a
        cool-down and the half-open probe limit, so a recovering server is probed, not
        flooded.
        """
        now = self._clock()
        self._advance(now)
        c = self._c
        if c.cooldown_until is not None and now < c.cooldown_until:
            return None
        if self._state is BreakerState.CLOSED:
            return Permit(self, c.epoch, probe=False)
        if self._state is BreakerState.OPEN and not force:
            return None
        if c.probes_in_flight >= self._policy.half_open_probes:
            return None
        c.probes_in_flight += 1
        return Permit(self, c.epoch, probe=True)

    def record_success(self, permit: Permit) -> None:
        """The call succeeded: a probe closes the breaker; while closed, resets the streak."""
        if not self._settle(permit):
            return
        now = self._clock()
        self._advance(now)
        if permit.probe:
            self._close(now, "probe succeeded")
        else:
            self._c.window.add(now)
            self._c.consecutive_failures = 0

    def record_failure(self, permit: Permit) -> None:
        """The call failed because of the deployment: may trip; a probe re-opens for longer."""
        if not self._settle(permit):
            return
        now = self._clock()
        self._advance(now)
        c = self._c
        if permit.probe:
            self._trip(now, "probe failed")
            return
        c.window.add(now, failed=True)
        c.consecutive_failures += 1
        if c.consecutive_failures >= self._policy.consecutive_failures:
            self._trip(now, "consecutive failures")
        elif (
            c.window.calls >= self._policy.minimum_calls
            and c.window.failures / c.window.calls >= self._policy.failure_rate
        ):
            self._trip(now, "failure rate")

    def record_throttle(self, permit: Permit) -> None:
        """A 429 without a wait hint: counted apart (not a failure); frees a probe permit."""
        # Counted even for a stale permit: the 429 is still news about the deployment.
        first = not permit.settled
        current = self._settle(permit)
        if first:
            now = self._clock()
            self._advance(now)
            self._c.throttles.add(now)
        if current and permit.probe:
            self._c.probes_in_flight -= 1

    def release(self, permit: Permit) -> None:
        """Neither success nor failure (cancelled, or the request's own fault): never counts."""
        if self._settle(permit) and permit.probe:
            self._c.probes_in_flight -= 1

    def force_open(self, seconds: float | None = None, *, reason: str) -> None:
        """Open now for ``policy.force_open_seconds`` (or ``seconds``): 401, 403, 404, ...

        ``breaker.force_open(reason="401 Unauthorized")``. Never shortens a longer open time
        already running, and does not grow the open time of later trips. Outstanding permits
        become stale.
        """
        duration = self._policy.force_open_seconds if seconds is None else seconds
        _check_float("seconds", duration)
        now = self._clock()
        self._advance(now)
        until = now + duration
        if self._state is BreakerState.OPEN:
            until = max(until, self._c.open_until)
        self._open(now, until, f"forced open: {reason}")

    def cool_down(self, seconds: float) -> None:
        """Reject `acquire` for ``seconds`` (a ``Retry-After`` hint) without changing state.

        Not a failure. A later hint that ends later extends the cool-down; one that ends
        sooner never shortens it.
        """
        _check_float("seconds", seconds)
        now = self._clock()
        self._advance(now)
        until = now + seconds
        c = self._c
        if c.cooldown_until is None or until > c.cooldown_until:
            c.cooldown_until = until

    def reset(self) -> None:
        """Back to closed with every counter and the cool-down cleared; permits go stale."""
        now = self._clock()
        self._advance(now)
        c = self._c
        c.epoch += 1
        c.probes_in_flight = 0
        c.trips = 0
        c.consecutive_failures = 0
        c.window.clear()
        c.throttles.clear()
        c.cooldown_until = None
        if self._state is not BreakerState.CLOSED:
            self._transition(BreakerState.CLOSED, now, "reset", None)

    def ready_in(self) -> float:
        """Seconds until `acquire` could succeed: 0.0 if it may now.

        Counts the open time and the cool-down. A half-open breaker whose probe permits are
        all taken reports 0.0 (a probe may settle at any moment), so this is a lower bound;
        pools use it to pick the deployment closest to reopening.
        """
        now = self._clock()
        self._advance(now)
        wait = 0.0
        if self._state is BreakerState.OPEN:
            wait = self._c.open_until - now
        if self._c.cooldown_until is not None:
            wait = max(wait, self._c.cooldown_until - now)
        return max(wait, 0.0)

    def snapshot(self) -> BreakerSnapshot:
        """The state and counters now (see `BreakerSnapshot`)."""
        now = self._clock()
        self._advance(now)
        c = self._c
        c.window.prune(now)
        c.throttles.prune(now)
        cooldown = c.cooldown_until
        return BreakerSnapshot(
            state=self._state,
            open_until=c.open_until if self._state is BreakerState.OPEN else None,
            cooldown_until=cooldown if cooldown is not None and now < cooldown else None,
            consecutive_failures=c.consecutive_failures,
            failure_rate=c.window.failures / c.window.calls if c.window.calls else 0.0,
            calls_in_window=c.window.calls,
            trips=c.trips,
            probes_in_flight=c.probes_in_flight,
            throttles_in_window=c.throttles.calls,
        )

    def __repr__(self) -> str:
        # No clock read here: a repr must not cause a transition.
        return f"<CircuitBreaker state={self._state.value} trips={self._c.trips}>"

    # -- internals -----------------------------------------------------------------------

    def _settle(self, permit: Permit) -> bool:
        """Mark ``permit`` settled; True if this is its first settle and it is not stale."""
        if permit._breaker is not self:
            raise ValueError("this permit was handed out by another CircuitBreaker")
        if permit._settled:
            return False
        permit._settled = True
        return permit._epoch == self._c.epoch

    def _advance(self, now: float) -> None:
        if self._state is BreakerState.OPEN and now >= self._c.open_until:
            # Same epoch: a forced probe taken while open still counts once half-open.
            self._transition(BreakerState.HALF_OPEN, now, "open time elapsed", None)

    def _trip(self, now: float, reason: str) -> None:
        self._c.trips += 1
        self._open(now, now + self._policy.open_time(self._c.trips, self._random()), reason)

    def _open(self, now: float, until: float, reason: str) -> None:
        c = self._c
        c.epoch += 1
        c.probes_in_flight = 0
        c.open_until = until
        self._transition(BreakerState.OPEN, now, reason, until)

    def _close(self, now: float, reason: str) -> None:
        c = self._c
        c.epoch += 1
        c.probes_in_flight = 0
        c.trips = 0
        c.consecutive_failures = 0
        c.window.clear()
        self._transition(BreakerState.CLOSED, now, reason, None)

    def _transition(
        self, new: BreakerState, now: float, reason: str, open_until: float | None
    ) -> None:
        old = self._state
        self._state = new
        if self.on_transition is not None:
            self.on_transition(BreakerTransition(old, new, now, reason, open_until))
