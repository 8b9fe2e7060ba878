"""Breaker state shared by a fleet of processes through a store such as Redis (SPEC §8).

Each process keeps its own `CircuitBreaker`, and that breaker still makes every decision,
synchronously. `SharedCircuitBreaker` adds what a fleet needs on top of it:

- What it learns, it tells the fleet: a trip, a forced open, a ``Retry-After`` cool-down, a
  probe that closed it again, and each failure while closed, so that a fleet trips after
  ``consecutive_failures`` failures in total rather than that many in every process.
- What the fleet learned, it applies to itself before admitting a request, from a local copy
  of the shared state that is read again in the background once it is ``sync_interval``
  old (one round trip for every deployment). A request never waits for the store on the
  healthy path, except after this process changed the shared state (its change must land
  first) or sat idle for ``STALE_INTERVALS`` intervals (its copy is too old to act on).
- While half-open, a probe needs a fleet-wide permit as well as the local one, so a
  recovering server sees ``half_open_probes`` probes in all, not that many per process. A
  permit is given back when its attempt settles or is cancelled, and expires if its process
  dies.

Store calls run one at a time, in order, on one worker thread. The event loop never blocks on
the store, breaker transitions (synchronous code) can publish without awaiting, and the same
code serves asyncio and trio. Each call is bounded by a short timeout; when the store fails,
the client carries on with local state, leaves the store alone for a growing pause, then tries
again by itself and re-publishes what it learned meanwhile. The store never fails a request.

Times in the store are the store's own clock (Redis ``TIME``) and reach a process as "seconds
from now", so processes on different hosts never compare their clocks.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import anyio

from .._core._breaker import BreakerPolicy, BreakerState, BreakerTransition, CircuitBreaker, Permit
from .._exceptions import ConfigurationError
from ._store import NOTHING_SHARED, ProbeAnswer, SharedRecord, SharedStore, StoreKey

if TYPE_CHECKING:
    from .._config._settings import Settings

__all__ = [
    "ProbeAnswer",
    "SharedCircuitBreaker",
    "SharedRecord",
    "SharedState",
    "SharedStats",
    "SharedStore",
    "StoreKey",
    "shared_state_from_settings",
]

logger = logging.getLogger("resilient_tts")

T = TypeVar("T")
# After a failed store call the store is left alone for this long, doubling up to the cap:
# a dead Redis costs one failed call per pause, not one per request.
_FIRST_PAUSE = 0.1
_MAX_PAUSE = 2.0
# A remote open time is applied only when it ends this much later than the local one: the
# same record read twice must not re-open the breaker (and log) each time.
_EXTEND_TOLERANCE = 0.25
# A request waits for a fresh copy once its copy is this many sync intervals old.
STALE_INTERVALS = 10
# A probe permit outlives the attempt timeout by this much before the store forgets it.
PROBE_TTL_MARGIN = 5.0


@dataclass(slots=True)
class SharedStats:
    """Counters of store traffic, for tests, benchmarks and health pages."""

    calls: int = 0  # store calls made (each one round trip)
    reads: int = 0  # of which refreshes of the local copy
    failures: int = 0  # calls that failed or timed out
    skipped: int = 0  # calls not made because the store was paused after a failure
    waits: int = 0  # admissions that waited for the store (its own change, or an idle copy)


class SharedState:
    """One client's link to the shared store: a worker thread, a local copy, its freshness.

    Built by `shared_state_from_settings`; `build_live_pool` asks it for one
    `SharedCircuitBreaker` per deployment, and `SpeechClient.aclose` closes it.

    The worker thread runs submitted calls in order and, while the client is in use, reads
    the fleet's state every ``sync_interval`` between them. It stops polling after
    `STALE_INTERVALS` intervals without an admission, and exits when the client closes.
    """

    def __init__(
        self,
        store: SharedStore,
        *,
        sync_interval: float,
        timeout: float,
        secrets: Sequence[str] = (),
    ) -> None:
        self._store = store
        self._secrets = [secret for secret in secrets if secret]  # never in a log line
        self._interval = sync_interval
        self._timeout = timeout
        self.stats = SharedStats()
        self._breakers: list[SharedCircuitBreaker] = []
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None  # started on first use
        self._seq = 0  # the last job submitted; event-loop thread only
        self._done_seq = 0  # the last job the worker took; worker thread only
        # What the worker delivered: (seq, breaker, record), applied on the event loop.
        self._inbox: deque[tuple[int, SharedCircuitBreaker, SharedRecord]] = deque()
        self._fetched_at = -math.inf  # when the last successful read began (monotonic)
        self._next_read = -math.inf  # when the worker reads next (worker thread only)
        self._admitted_at = -math.inf  # the last admission; the worker polls while recent
        self._last_write: Future[Any] | None = None
        self._last_read: Future[Any] | None = None
        self._waiters: anyio.CapacityLimiter | None = None
        self._closed = False
        # Health, written by the worker thread only.
        self._healthy = True
        self._paused_until = 0.0
        self._pause = _FIRST_PAUSE
        self._recovered = False

    def __repr__(self) -> str:
        health = "healthy" if self._healthy else "unavailable"
        return f"<SharedState {health} breakers={len(self._breakers)} calls={self.stats.calls}>"

    @property
    def healthy(self) -> bool:
        """False after a failed store call, until one succeeds again."""
        return self._healthy

    def breaker_for(
        self,
        pool: str,
        deployment: str,
        policy: BreakerPolicy,
        *,
        clock: Callable[[], float],
        probe_ttl: float,
        on_transition: Callable[[BreakerTransition], None] | None = None,
    ) -> SharedCircuitBreaker:
        """A breaker for one deployment whose state this link shares with the fleet."""
        key = StoreKey(pool, deployment, policy.window_seconds)
        breaker = SharedCircuitBreaker(
            policy,
            clock=clock,
            on_transition=on_transition,
            shared=self,
            key=key,
            probe_ttl=probe_ttl,
        )
        self._breakers.append(breaker)
        return breaker

    # -- on the event loop ----------------------------------------------------------------

    async def sync(self) -> None:
        """Apply what the worker read before an admission; rarely waits, and never long.

        While the client is busy the worker keeps the copy younger than ``sync_interval``,
        so a request waits for nothing. It waits (while the store is healthy, at most the
        store timeout) only for a change this process published that has not reached the
        store yet, or for a fresh copy after the process sat idle for `STALE_INTERVALS`
        intervals: it must not act on old news.
        """
        now = time.monotonic()
        self._admitted_at = now
        self._apply_results()
        if self._closed or now < self._paused_until:
            return
        job = self._last_write
        if now - self._fetched_at >= self._interval * STALE_INTERVALS:
            if self._last_read is None or self._last_read.done():
                self._last_read = self._submit(self._read_all, write=False)
            job = self._last_read  # in order: every earlier write is done by then
        if job is not None and not job.done() and self._healthy:
            self.stats.waits += 1
            await self._wait(job)
            self._apply_results()

    async def refresh(self) -> None:
        """Read the fleet's state now and apply it; bounded by the store timeout."""
        job = self._submit(self._read_all, write=False)
        if job is not None and self._healthy:
            await self._wait(job)
        self._apply_results()

    async def acquire_probe(
        self, breaker: SharedCircuitBreaker, token: str, *, forced: bool
    ) -> tuple[ProbeAnswer, float] | None:
        """A fleet-wide probe permit, or None when the store is unavailable (or too slow)."""
        if self._closed or not self._healthy or time.monotonic() < self._paused_until:
            return None
        key, limit, ttl = breaker.key, breaker.policy.half_open_probes, breaker.probe_ttl
        known = breaker.applied_event

        def ask(_seq: int) -> tuple[ProbeAnswer, float]:
            return self._store.acquire_probe(key, token, limit, ttl, known, forced=forced)

        job = self._submit(ask, write=False)
        if job is None:
            return None
        await self._wait(job)
        return job.result() if job.done() else None

    async def aclose(self) -> None:
        """Give back every probe permit this process holds, then close the store; bounded."""
        if self._closed:
            return
        if self._worker is None:  # never used: nothing to give back, no connection to wait for
            self._closed = True
            self._store.close()
            return
        for breaker in self._breakers:
            for token in breaker.take_tokens():
                self.release_probe(breaker, token)
        last = self._submit(lambda _seq: self._store.close(), write=True, always=True)
        self._closed = True
        self._jobs.put(None)  # the worker exits after the jobs before it
        if last is not None and self._worker is not None:
            with anyio.CancelScope(shield=True):
                await self._wait(last, bound=max(1.0, 10 * self._timeout))

    # Publications from the breakers: synchronous, never blocking.

    def publish_open(
        self, breaker: SharedCircuitBreaker, seconds: float, reason: str, *, trip: bool
    ) -> None:
        event = uuid.uuid4().hex
        breaker.published(event)
        key = breaker.key
        self._deliver(
            breaker, lambda: self._store.publish_open(key, seconds, reason, event, trip=trip), True
        )

    def publish_closed(self, breaker: SharedCircuitBreaker, reason: str) -> None:
        event = uuid.uuid4().hex
        breaker.published(event)
        key = breaker.key
        self._deliver(breaker, lambda: self._store.publish_closed(key, reason, event), True)

    def publish_cooldown(self, breaker: SharedCircuitBreaker, seconds: float) -> None:
        key = breaker.key
        self._deliver(breaker, lambda: self._store.publish_cooldown(key, seconds), False)

    def report_failure(self, breaker: SharedCircuitBreaker) -> None:
        key = breaker.key
        self._deliver(breaker, lambda: self._store.record_failure(key), False)

    def report_success(self, breaker: SharedCircuitBreaker) -> None:
        key = breaker.key
        self._deliver(breaker, lambda: self._store.record_success(key), False)

    def release_probe(self, breaker: SharedCircuitBreaker, token: str) -> None:
        key = breaker.key
        self._submit(lambda _seq: self._store.release_probe(key, token), write=True, always=True)

    # Internals.

    def _deliver(
        self, breaker: SharedCircuitBreaker, call: Callable[[], SharedRecord], change: bool
    ) -> None:
        """Submit a write; its answer (the record after it) updates the local copy."""

        def job(seq: int) -> bool:
            self._inbox.append((seq, breaker, call()))
            return True

        if self._submit(job, write=True) is not None and change:
            # Answers to calls submitted before this change describe the state before it.
            breaker.ignore_results_before(self._seq)

    def _submit(
        self, call: Callable[[int], T], *, write: bool, always: bool = False
    ) -> Future[T | None] | None:
        """Run ``call(seq)`` on the worker thread, after every call submitted before it."""
        if self._closed:
            return None
        self._seq += 1
        future: Future[T | None] = Future()
        self._jobs.put(_Job(self._seq, call, always, future))
        if write:
            self._last_write = future
        if self._worker is None:
            self._worker = threading.Thread(
                target=self._work, name="resilient-tts-shared-state", daemon=True
            )
            self._worker.start()
        return future

    # -- on the worker thread --------------------------------------------------------------

    def _work(self) -> None:
        """Run jobs in order; between them, read the fleet's state while the client is busy."""
        while True:
            now = time.monotonic()
            polling = now - self._admitted_at < self._interval * STALE_INTERVALS
            wait = max(0.0, self._next_read - now) if polling else None
            try:
                job = self._jobs.get(timeout=wait)
            except queue.Empty:
                self._guarded(self._read_all, self._done_seq, always=False)
                continue
            if job is None:
                return
            self._done_seq = job.seq
            job.future.set_result(self._guarded(job.call, job.seq, always=job.always))

    def _read_all(self, seq: int) -> bool:
        """Read every deployment in one round trip; ``seq``: the last job taken before it."""
        started = time.monotonic()
        self._next_read = started + self._interval
        breakers = list(self._breakers)
        records = self._store.read([breaker.key for breaker in breakers])
        for breaker, record in zip(breakers, records, strict=True):
            self._inbox.append((seq, breaker, record))
        self._fetched_at = started
        self.stats.reads += 1
        return True

    def _guarded(self, call: Callable[[int], T], seq: int, *, always: bool) -> T | None:
        """Skip while paused, never raise, keep the health current."""
        if not always and time.monotonic() < self._paused_until:
            self.stats.skipped += 1
            return None
        self.stats.calls += 1
        try:
            result = call(seq)
        except Exception as exc:  # the store must never fail a request
            self._failed(exc)
            return None
        if not self._healthy:
            self._healthy = True
            self._recovered = True
            logger.info("shared breaker state is reachable again; sharing resumes")
        self._pause = _FIRST_PAUSE
        return result

    def _failed(self, exc: Exception) -> None:
        self.stats.failures += 1
        self._paused_until = time.monotonic() + self._pause
        self._next_read = self._paused_until
        if self._healthy:
            self._healthy = False
            message = str(exc)
            for secret in self._secrets:
                message = message.replace(secret, "***")
            logger.warning(
                "shared breaker state unavailable (%s: %s); going on with local state and "
                "trying again by itself",
                type(exc).__name__,
                message,
            )
        self._pause = min(self._pause * 2, _MAX_PAUSE)

    # -- back on the event loop ------------------------------------------------------------

    async def _wait(self, job: Future[T], *, bound: float | None = None) -> None:
        """Wait for a job on the worker thread, never longer than the store timeout allows."""
        if job.done():
            return
        if self._waiters is None:
            # A couple of helper threads wait for the worker; other waiters queue behind them.
            self._waiters = anyio.CapacityLimiter(2)
        seconds = 2 * self._timeout if bound is None else bound
        with anyio.move_on_after(seconds):
            await anyio.to_thread.run_sync(
                _wait_for, job, seconds, abandon_on_cancel=True, limiter=self._waiters
            )

    def _apply_results(self) -> None:
        """Apply what the worker delivered, in order; on the event loop only."""
        while self._inbox:
            seq, breaker, record = self._inbox.popleft()
            breaker.apply(record, seq)
        if self._recovered:
            self._recovered = False
            for breaker in self._breakers:
                breaker.republish()


@dataclass(frozen=True, slots=True)
class _Job:
    seq: int
    call: Callable[[int], Any]
    always: bool  # run even while the store is paused after a failure (releases, close)
    future: Future[Any]


def _wait_for(job: Future[T], seconds: float) -> None:
    with contextlib.suppress(FutureTimeout):  # the caller looks at the job itself
        job.result(timeout=seconds)


class SharedCircuitBreaker(CircuitBreaker):
    """A `CircuitBreaker` that shares its state with a fleet through `SharedState`.

    Decisions stay local and synchronous (see `CircuitBreaker`); `admit` is the async entry
    that first brings in what the fleet learned and, while half-open, takes a fleet-wide
    probe permit. Changes that come from the fleet are applied quietly: they are logged and
    reported like any transition (reasons start with "shared:"), but never published back.
    """

    __slots__ = (
        "_applied_event",
        "_min_seq",
        "_quiet",
        "_remote",
        "_shared",
        "_success_reported",
        "_tokens",
        "key",
        "probe_ttl",
    )

    def __init__(
        self,
        policy: BreakerPolicy,
        *,
        clock: Callable[[], float],
        shared: SharedState,
        key: StoreKey,
        probe_ttl: float,
        random: Callable[[], float] = random.random,
        on_transition: Callable[[BreakerTransition], None] | None = None,
    ) -> None:
        super().__init__(policy, clock=clock, random=random, on_transition=on_transition)
        self._shared = shared
        self.key = key
        self.probe_ttl = probe_ttl
        self._applied_event: str | None = None
        self._min_seq = 0
        self._quiet = False
        self._remote = NOTHING_SHARED
        self._success_reported = False
        self._tokens: dict[Permit, str] = {}

    async def admit(self, *, force: bool = False) -> Permit | None:
        """`acquire`, after syncing with the fleet; a probe also needs a fleet-wide permit."""
        await self._shared.sync()
        permit = self.acquire(force=force)
        if permit is None or not permit.probe:
            return permit
        token = uuid.uuid4().hex
        # Given back when the permit settles, whatever the store answers now: a late "yes"
        # after a timeout must not hold the fleet's permit until it expires.
        self._tokens[permit] = token
        try:
            asked = await self._shared.acquire_probe(self, token, forced=force)
        except BaseException:
            self.release(permit)  # cancelled while asking: not a failure, frees both permits
            raise
        if asked is None or asked[0] == "granted":
            return permit  # granted, or the store is unavailable: the local limit applies
        answer, open_left = asked
        del self._tokens[permit]
        self.release(permit)
        if answer == "taken":  # another process is probing: do not pile on
            return None
        # Our copy is behind: a probe elsewhere settled since. Catch up, quietly.
        self._quiet = True
        try:
            if answer == "closed":
                self._close(self._clock(), "shared: probe succeeded elsewhere")
            else:
                self.force_open(open_left, reason="shared: probe failed elsewhere")
        finally:
            self._quiet = False
        return self.acquire(force=force)

    # -- settling permits: also give back the fleet-wide probe permit ----------------------

    def record_success(self, permit: Permit) -> None:
        report = self._counts(permit) and self._remote.streak > 0 and not self._success_reported
        super().record_success(permit)
        self._give_back(permit)
        if report:
            self._success_reported = True
            self._shared.report_success(self)

    def record_failure(self, permit: Permit) -> None:
        report = self._counts(permit)
        super().record_failure(permit)
        self._give_back(permit)
        if report and self._state is BreakerState.CLOSED:  # a local trip is published as one
            self._shared.report_failure(self)

    def record_throttle(self, permit: Permit) -> None:
        super().record_throttle(permit)
        self._give_back(permit)

    def release(self, permit: Permit) -> None:
        super().release(permit)
        self._give_back(permit)

    def cool_down(self, seconds: float) -> None:
        super().cool_down(seconds)
        if not self._quiet:
            self._shared.publish_cooldown(self, seconds)

    # -- for SharedState -------------------------------------------------------------------

    def take_tokens(self) -> list[str]:
        """Every fleet-wide probe permit still held, forgotten here (the client is closing)."""
        tokens = list(self._tokens.values())
        self._tokens.clear()
        return tokens

    @property
    def applied_event(self) -> str | None:
        """The last change of the shared state this breaker knows about."""
        return self._applied_event

    def published(self, event: str) -> None:
        """This process made change ``event``: reading it back later is no news."""
        self._applied_event = event

    def ignore_results_before(self, seq: int) -> None:
        self._min_seq = seq

    def apply(self, record: SharedRecord, seq: int) -> None:
        """Apply what the fleet knows, unless it predates a change made here since."""
        if seq < self._min_seq:
            return
        if record.streak != self._remote.streak:
            self._success_reported = False
        self._remote = record
        now = self._clock()
        self._quiet = True
        try:
            cooldown = record.cooldown_left()
            if cooldown > 0:
                self.cool_down(cooldown)  # never shortens a local cool-down
            if record.event is not None and record.event != self._applied_event:
                self._applied_event = record.event
                self._follow(record, now)
            self._extend(record, now)
        finally:
            self._quiet = False
        if (
            record.state == "closed"
            and record.streak >= self.policy.consecutive_failures
            and self.state is BreakerState.CLOSED
        ):
            # The fleet's failures add up to a trip: trip here, and publish it as a trip.
            self._trip(now, f"{record.streak} consecutive failures across the fleet")

    def republish(self) -> None:
        """The store is back after an outage: publish what was learned meanwhile."""
        snapshot = self.snapshot()
        now = self._clock()
        if snapshot.state is BreakerState.OPEN and snapshot.open_until is not None:
            self._shared.publish_open(self, snapshot.open_until - now, "re-published", trip=False)
        if snapshot.cooldown_until is not None:
            self._shared.publish_cooldown(self, snapshot.cooldown_until - now)

    # -- internals -------------------------------------------------------------------------

    def _counts(self, permit: Permit) -> bool:
        """Whether settling ``permit`` counts in the closed-state statistics."""
        return not permit.settled and not permit.probe and permit._epoch == self._c.epoch

    def _give_back(self, permit: Permit) -> None:
        token = self._tokens.pop(permit, None)
        if token is not None:
            self._shared.release_probe(self, token)

    def _follow(self, record: SharedRecord, now: float) -> None:
        """A change made elsewhere in the fleet; the open time itself is `_extend`'s job."""
        state = self.state
        if record.state == "closed":
            if state is not BreakerState.CLOSED:
                self._close(now, f"shared: {record.reason or 'closed'} elsewhere")
        elif record.open_left() <= 0 and state is BreakerState.CLOSED:
            # Open time over, no probe has succeeded yet: probe like the rest of the fleet.
            self.force_open(0.0, reason=f"shared: half-open across the fleet ({record.reason})")

    def _extend(self, record: SharedRecord, now: float) -> None:
        left = record.open_left()
        if record.state != "open" or left <= 0:
            return
        open_until = self._c.open_until if self.state is BreakerState.OPEN else -math.inf
        if open_until < now + left - _EXTEND_TOLERANCE:
            self.force_open(left, reason=f"shared: {record.reason}")

    def _transition(
        self, new: BreakerState, now: float, reason: str, open_until: float | None
    ) -> None:
        super()._transition(new, now, reason, open_until)
        if self._quiet:
            return
        if new is BreakerState.OPEN and open_until is not None:
            trip = not reason.startswith("forced open")
            seconds = open_until - now
            if trip:
                # The open time grows with the fleet's consecutive trips, not only this one's.
                seconds = max(
                    seconds, self.policy.open_time(self._remote.trips + 1, self._random())
                )
            self._shared.publish_open(self, seconds, reason, trip=trip)
        elif new is BreakerState.CLOSED:
            self._shared.publish_closed(self, reason)


def shared_state_from_settings(settings: Settings) -> SharedState | None:
    """The shared state ``RESILIENT_TTS_REDIS_URL`` asks for, or None; no I/O happens here."""
    if settings.redis_url is None:
        return None
    try:
        from ._redis_state import RedisStore
    except ImportError as exc:
        raise ConfigurationError(
            "RESILIENT_TTS_REDIS_URL is set but the redis package is not installed: "
            "pip install 'resilient-tts[redis]'"
        ) from exc
    url = settings.redis_url.get_secret_value()
    store = RedisStore.from_url(
        url,
        prefix=settings.redis_prefix,
        timeout=settings.redis_timeout,
    )
    password = urlsplit(url).password
    return SharedState(
        store,
        sync_interval=settings.redis_sync_interval,
        timeout=settings.redis_timeout,
        secrets=[password] if password else [],
    )
