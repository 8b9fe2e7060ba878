"""The circuit breaker state machine (SPEC §4), driven by a fake clock: nothing sleeps."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random as random_module
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

from resilient_tts._core._breaker import (
    _WINDOW_SLOTS,
    BreakerPolicy,
    BreakerSnapshot,
    BreakerState,
    BreakerTransition,
    CircuitBreaker,
    Permit,
    _SlidingCounts,
)

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN

# Exact open times unless a test is about jitter.
EXACT = BreakerPolicy(jitter=0.0)


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Harness:
    """A breaker, its clock and every transition it reported."""

    def __init__(
        self, policy: BreakerPolicy = EXACT, random: Callable[[], float] = lambda: 0.0
    ) -> None:
        self.clock = FakeClock()
        self.transitions: list[BreakerTransition] = []
        self.breaker = CircuitBreaker(
            policy, clock=self.clock, random=random, on_transition=self.transitions.append
        )

    def permit(self, *, force: bool = False) -> Permit:
        permit = self.breaker.acquire(force=force)
        assert permit is not None
        return permit

    def succeed(self, times: int = 1) -> None:
        for _ in range(times):
            self.breaker.record_success(self.permit())

    def fail(self, times: int = 1) -> None:
        for _ in range(times):
            self.breaker.record_failure(self.permit())

    def trip(self) -> None:
        """Trip a closed breaker through consecutive failures."""
        self.fail(self.breaker.policy.consecutive_failures)
        assert self.breaker.state is OPEN

    def to_half_open(self) -> None:
        self.clock.advance(self.breaker.ready_in())
        assert self.breaker.state is HALF_OPEN

    def reasons(self) -> list[str]:
        return [t.reason for t in self.transitions]


def sequence(values: Iterable[float]) -> Callable[[], float]:
    """A `random` that returns ``values`` in turn, forever."""
    it = itertools.cycle(values)
    return lambda: next(it)


# -- policy ------------------------------------------------------------------------------


def test_policy_defaults_follow_the_spec() -> None:
    """The defaults are the documented ones (RESILIENT_TTS_BREAKER_OPEN_SECONDS = 5)."""
    policy = BreakerPolicy()
    assert dataclasses.asdict(policy) == {
        "consecutive_failures": 5,
        "failure_rate": 0.5,
        "window_seconds": 30.0,
        "minimum_calls": 10,
        "open_seconds": 5.0,
        "max_open_seconds": 60.0,
        "open_multiplier": 2.0,
        "jitter": 0.2,
        "half_open_probes": 1,
        "force_open_seconds": 300.0,
    }


def test_policy_is_frozen() -> None:
    """A policy is an immutable value."""
    policy = BreakerPolicy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.open_seconds = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("consecutive_failures", 0),
        ("consecutive_failures", -1),
        ("consecutive_failures", 2.5),
        ("consecutive_failures", True),
        ("failure_rate", 0.0),
        ("failure_rate", -0.1),
        ("failure_rate", 1.01),
        ("failure_rate", math.nan),
        ("window_seconds", 0.0),
        ("window_seconds", math.inf),
        ("minimum_calls", 0),
        ("open_seconds", 0.0),
        ("open_seconds", -5.0),
        ("max_open_seconds", 1.0),  # below open_seconds
        ("open_multiplier", 0.5),
        ("jitter", -0.1),
        ("jitter", math.nan),
        ("half_open_probes", 0),
        ("force_open_seconds", 0.0),
        ("force_open_seconds", "300"),
    ],
)
def test_policy_rejects_nonsense(field: str, value: Any) -> None:
    """Nonsense raises ValueError naming the field."""
    with pytest.raises(ValueError, match=field):
        BreakerPolicy(**{field: value})


def test_policy_accepts_edges() -> None:
    """A rate of exactly 1, no jitter, no growth and a single-call window are all valid."""
    BreakerPolicy(
        failure_rate=1.0,
        jitter=0.0,
        open_multiplier=1.0,
        minimum_calls=1,
        consecutive_failures=1,
        open_seconds=300.0,
        max_open_seconds=300.0,
    )


def test_open_time_grows_caps_then_jitters() -> None:
    """Open time doubles per trip, is capped, and jitter is applied after the cap."""
    policy = BreakerPolicy(open_seconds=5.0, max_open_seconds=30.0, jitter=0.2)
    assert [policy.open_time(n) for n in range(1, 6)] == [5.0, 10.0, 20.0, 30.0, 30.0]
    assert policy.open_time(1, 0.5) == pytest.approx(5.5)
    assert policy.open_time(9, 0.999) == pytest.approx(30.0 * 1.1998)


def test_open_time_survives_huge_trip_counts() -> None:
    """The growth never overflows: any trip count gives the cap."""
    assert BreakerPolicy(jitter=0.0).open_time(10_000) == 60.0


def test_open_time_counts_trips_from_one() -> None:
    """Trip 0 is a programming error."""
    with pytest.raises(ValueError, match="trip"):
        BreakerPolicy().open_time(0)


# -- closed, and tripping ----------------------------------------------------------------


def test_new_breaker_is_closed_and_empty() -> None:
    """A fresh breaker admits calls and reports zeroed counters."""
    h = Harness()
    assert h.breaker.state is CLOSED
    assert h.breaker.ready_in() == 0.0
    assert h.breaker.snapshot() == BreakerSnapshot(
        state=CLOSED,
        open_until=None,
        cooldown_until=None,
        consecutive_failures=0,
        failure_rate=0.0,
        calls_in_window=0,
        trips=0,
        probes_in_flight=0,
        throttles_in_window=0,
    )
    permit = h.permit()
    assert not permit.probe
    assert not permit.settled


def test_state_is_a_string() -> None:
    """States compare and format as their lower-case names, for logs and metrics."""
    assert OPEN == "open"
    assert f"{HALF_OPEN}" == "half_open"


def test_trips_on_consecutive_failures() -> None:
    """The n-th failure in a row trips the breaker for open_seconds, not one before."""
    h = Harness()
    h.fail(4)
    assert h.breaker.state is CLOSED
    assert h.breaker.snapshot().consecutive_failures == 4
    h.fail()
    assert h.breaker.state is OPEN
    assert h.transitions == [
        BreakerTransition(CLOSED, OPEN, h.clock.now, "consecutive failures", h.clock.now + 5.0)
    ]
    assert h.breaker.acquire() is None
    snap = h.breaker.snapshot()
    assert snap.open_until == h.clock.now + 5.0
    assert snap.trips == 1
    assert snap.consecutive_failures == 5  # kept while open: it explains the trip


def test_success_while_closed_resets_the_streak() -> None:
    """A success between failures starts the consecutive count again."""
    h = Harness()
    h.fail(4)
    h.succeed()
    assert h.breaker.snapshot().consecutive_failures == 0
    h.fail(4)
    assert h.breaker.state is CLOSED


def test_trips_on_failure_rate_once_minimum_calls_reached() -> None:
    """The failure rate trips only with at least minimum_calls in the window."""
    h = Harness(BreakerPolicy(consecutive_failures=100, minimum_calls=10, jitter=0.0))
    for _ in range(4):
        h.fail()
        h.succeed()
    h.fail()  # 5 failures of 9 calls: above the rate, below the minimum
    snap = h.breaker.snapshot()
    assert (snap.calls_in_window, snap.state) == (9, CLOSED)
    assert snap.failure_rate == pytest.approx(5 / 9)
    h.fail()  # 6 of 10
    assert h.breaker.state is OPEN
    assert h.reasons() == ["failure rate"]


def test_failure_rate_trips_at_exactly_the_threshold() -> None:
    """A rate equal to failure_rate trips (reaches, not exceeds)."""
    h = Harness(BreakerPolicy(consecutive_failures=100, minimum_calls=4, jitter=0.0))
    h.succeed(2)
    h.fail()
    assert h.breaker.state is CLOSED
    h.fail()  # 2 of 4 = 0.5
    assert h.reasons() == ["failure rate"]


def test_failure_rate_below_threshold_stays_closed() -> None:
    """Many calls with a low failure rate never trip."""
    h = Harness(BreakerPolicy(consecutive_failures=100, minimum_calls=4, jitter=0.0))
    for _ in range(50):
        h.succeed(2)
        h.fail()
    assert h.breaker.state is CLOSED
    assert h.breaker.snapshot().failure_rate == pytest.approx(50 / 150)


def test_consecutive_failures_take_precedence_in_the_reason() -> None:
    """When both rules trip at once, the reason is the consecutive one."""
    h = Harness(BreakerPolicy(consecutive_failures=3, minimum_calls=3, jitter=0.0))
    h.fail(3)
    assert h.reasons() == ["consecutive failures"]


def test_window_forgets_old_calls() -> None:
    """Calls older than window_seconds no longer count toward the rate."""
    policy = BreakerPolicy(
        consecutive_failures=100, minimum_calls=4, window_seconds=30.0, jitter=0.0
    )
    h = Harness(policy)
    h.fail(3)  # at t0
    h.clock.advance(29.9)
    assert h.breaker.snapshot().calls_in_window == 3
    h.clock.advance(0.1)  # exactly window_seconds later: gone
    assert h.breaker.snapshot().calls_in_window == 0
    h.succeed(3)
    h.fail()  # 1 of 4: the old failures would have made it 4 of 7
    assert h.breaker.state is CLOSED
    assert h.breaker.snapshot().failure_rate == 0.25


def test_window_slides_call_by_call() -> None:
    """Each call leaves the window window_seconds after it was recorded."""
    policy = BreakerPolicy(consecutive_failures=100, window_seconds=10.0, jitter=0.0)
    h = Harness(policy)
    for _ in range(5):
        h.fail()
        h.clock.advance(1.0)
    assert h.breaker.snapshot().calls_in_window == 5
    h.clock.advance(5.0)  # the first call is now exactly 10 s old
    assert h.breaker.snapshot().calls_in_window == 4
    h.clock.advance(3.5)
    assert h.breaker.snapshot().calls_in_window == 1


def test_window_expiry_does_not_clear_the_streak() -> None:
    """Consecutive failures are a count of calls, not of time: they survive the window."""
    h = Harness()
    h.fail(4)
    h.clock.advance(3600.0)
    h.fail()
    assert h.reasons() == ["consecutive failures"]


def test_window_memory_is_bounded() -> None:
    """However many calls arrive, the window keeps about _WINDOW_SLOTS entries."""
    window = _SlidingCounts(30.0)
    for i in range(100_000):
        window.add(i * 0.001, failed=i % 3 == 0)
    assert len(window) <= _WINDOW_SLOTS + 2
    # Everything from the last 30 s, plus at most 1% of the window's worth of older calls.
    assert 30_000 <= window.calls <= 30_000 + 300
    assert window.failures == pytest.approx(window.calls / 3, abs=2)


def test_merged_window_entries_never_expire_early() -> None:
    """Calls that share an entry are counted for at least window_seconds each."""
    window = _SlidingCounts(10.0)
    window.add(0.0)
    window.add(0.05)  # within 10 s / 100 of the first: shares its entry
    window.prune(9.99)
    assert window.calls == 2
    window.prune(10.05)
    assert window.calls == 0


# -- open, half-open ---------------------------------------------------------------------


def test_open_becomes_half_open_lazily() -> None:
    """Nothing happens at open_until itself; the next question makes it half-open."""
    h = Harness()
    h.trip()
    opened_at = h.clock.now
    h.clock.advance(4.999)
    assert h.breaker.acquire() is None
    assert h.breaker.ready_in() == pytest.approx(0.001)
    h.clock.advance(60.0)
    assert len(h.transitions) == 1  # no timer fired
    assert h.breaker.state is HALF_OPEN
    assert h.transitions[-1] == BreakerTransition(
        OPEN, HALF_OPEN, opened_at + 65.0 - 0.001, "open time elapsed", None
    )
    assert h.breaker.snapshot().open_until is None


def test_half_open_admits_one_probe_at_a_time() -> None:
    """While a probe is in flight, other callers are turned away."""
    h = Harness()
    h.trip()
    h.to_half_open()
    probe = h.permit()
    assert probe.probe
    assert h.breaker.acquire() is None
    assert h.breaker.snapshot().probes_in_flight == 1
    assert h.breaker.ready_in() == 0.0  # a lower bound: the probe may settle any moment


def test_half_open_probe_limit_is_configurable() -> None:
    """half_open_probes permits are handed out, then None."""
    h = Harness(BreakerPolicy(half_open_probes=3, jitter=0.0))
    h.trip()
    h.to_half_open()
    probes = [h.permit() for _ in range(3)]
    assert all(p.probe for p in probes)
    assert h.breaker.acquire() is None
    h.breaker.release(probes[0])
    assert h.breaker.acquire() is not None


def test_probe_success_closes_and_forgets() -> None:
    """A probe success closes the breaker and clears counters and the trip count."""
    h = Harness()
    h.trip()
    h.to_half_open()
    h.breaker.record_success(h.permit())
    assert h.breaker.state is CLOSED
    assert h.reasons() == ["consecutive failures", "open time elapsed", "probe succeeded"]
    assert h.transitions[-1].open_until is None
    snap = h.breaker.snapshot()
    assert (snap.trips, snap.consecutive_failures, snap.calls_in_window) == (0, 0, 0)
    h.trip()  # the next trip starts from the base open time again
    assert h.breaker.ready_in() == 5.0


def test_probe_failure_reopens_for_longer() -> None:
    """A probe failure re-opens the breaker for open_multiplier times as long."""
    h = Harness()
    h.trip()
    h.to_half_open()
    h.breaker.record_failure(h.permit())
    assert h.breaker.state is OPEN
    assert h.transitions[-1] == BreakerTransition(
        HALF_OPEN, OPEN, h.clock.now, "probe failed", h.clock.now + 10.0
    )
    assert h.breaker.snapshot().trips == 2
    assert h.breaker.snapshot().probes_in_flight == 0


def test_open_time_grows_to_the_cap() -> None:
    """Consecutive trips open for 5, 10, 20, 40 ... seconds, never more than the cap."""
    h = Harness(BreakerPolicy(max_open_seconds=60.0, jitter=0.0))
    h.trip()
    seen = [h.breaker.ready_in()]
    for _ in range(5):
        h.to_half_open()
        h.breaker.record_failure(h.permit())
        seen.append(h.breaker.ready_in())
    assert seen == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]


@pytest.mark.parametrize("draw", [0.0, 0.25, 0.999999])
def test_jitter_only_lengthens_the_open_time(draw: float) -> None:
    """Jitter adds up to `jitter` of the (capped) open time and never takes any away."""
    h = Harness(BreakerPolicy(max_open_seconds=8.0, jitter=0.2), random=lambda: draw)
    h.trip()
    assert h.breaker.ready_in() == pytest.approx(5.0 * (1 + 0.2 * draw))
    for _ in range(3):
        h.to_half_open()
        h.breaker.record_failure(h.permit())
    assert h.breaker.ready_in() == pytest.approx(8.0 * (1 + 0.2 * draw))
    assert 8.0 <= h.breaker.ready_in() < 8.0 * 1.2


def test_jitter_draws_from_the_injected_random() -> None:
    """Each trip draws once from `random`."""
    h = Harness(BreakerPolicy(jitter=0.5), random=sequence([0.5, 0.0]))
    h.trip()
    assert h.breaker.ready_in() == pytest.approx(5.0 * 1.25)
    h.to_half_open()
    h.breaker.record_failure(h.permit())
    assert h.breaker.ready_in() == pytest.approx(10.0)


def test_released_probe_frees_its_slot_and_never_counts() -> None:
    """A cancelled probe is released: the slot frees, the state does not move."""
    h = Harness()
    h.trip()
    h.to_half_open()
    before = len(h.transitions)
    h.breaker.release(h.permit())
    assert h.breaker.state is HALF_OPEN
    assert len(h.transitions) == before
    assert h.breaker.snapshot().probes_in_flight == 0
    h.breaker.record_success(h.permit())
    assert h.breaker.state is CLOSED


def test_release_while_closed_never_counts() -> None:
    """A released permit is neither a success nor a failure."""
    h = Harness()
    h.fail(4)
    before = h.breaker.snapshot()
    h.breaker.release(h.permit())
    assert h.breaker.snapshot() == before


# -- throttles ---------------------------------------------------------------------------


def test_throttle_is_counted_apart() -> None:
    """A 429 without a hint is neither a failure nor a success."""
    h = Harness()
    h.fail(4)
    for _ in range(10):
        h.breaker.record_throttle(h.permit())
    snap = h.breaker.snapshot()
    assert snap.state is CLOSED
    assert (snap.throttles_in_window, snap.consecutive_failures, snap.calls_in_window) == (
        10,
        4,
        4,
    )
    h.clock.advance(30.0)
    assert h.breaker.snapshot().throttles_in_window == 0


def test_throttled_probe_frees_its_slot() -> None:
    """A throttled probe neither closes nor re-opens, and lets another probe in."""
    h = Harness()
    h.trip()
    h.to_half_open()
    h.breaker.record_throttle(h.permit())
    assert h.breaker.state is HALF_OPEN
    snap = h.breaker.snapshot()
    assert (snap.probes_in_flight, snap.throttles_in_window) == (0, 1)
    assert h.breaker.acquire() is not None


def test_stale_throttle_still_counts_as_news() -> None:
    """A 429 on a permit from before a trip is still counted, but changes nothing else."""
    h = Harness()
    old = h.permit()
    h.trip()
    h.breaker.record_throttle(old)
    assert h.breaker.snapshot().throttles_in_window == 1
    assert h.breaker.state is OPEN


# -- stale permits and double settling ---------------------------------------------------


def test_late_success_does_not_close_an_open_breaker() -> None:
    """A permit taken while closed that succeeds after the trip is ignored."""
    h = Harness()
    late = h.permit()
    h.trip()
    h.breaker.record_success(late)
    assert h.breaker.state is OPEN
    assert late.settled


def test_late_failure_does_not_extend_an_open_breaker() -> None:
    """A permit taken while closed that fails after the trip neither extends nor re-trips."""
    h = Harness()
    late = [h.permit() for _ in range(10)]
    h.trip()
    before = h.breaker.snapshot()
    for permit in late:
        h.breaker.record_failure(permit)
    assert h.breaker.snapshot() == before
    assert h.reasons() == ["consecutive failures"]


def test_late_closed_permit_is_no_probe_in_half_open() -> None:
    """A pre-trip permit settling while half-open neither closes nor re-opens."""
    h = Harness()
    good, bad = h.permit(), h.permit()
    h.trip()
    h.to_half_open()
    h.breaker.record_success(good)
    h.breaker.record_failure(bad)
    assert h.breaker.state is HALF_OPEN
    assert h.breaker.acquire() is not None  # and the probe slot is untouched


def test_other_probes_go_stale_once_one_decides() -> None:
    """After one probe closes or re-opens the breaker, the other probes' results are ignored."""
    h = Harness(BreakerPolicy(half_open_probes=2, jitter=0.0))
    h.trip()
    h.to_half_open()
    first, second = h.permit(), h.permit()
    h.breaker.record_failure(first)
    assert h.breaker.state is OPEN
    h.breaker.record_success(second)  # tripped after it was taken: must not close
    assert h.breaker.state is OPEN
    h.to_half_open()
    first, second = h.permit(), h.permit()
    h.breaker.record_success(first)
    h.breaker.record_failure(second)
    assert h.breaker.state is CLOSED
    assert h.breaker.snapshot().consecutive_failures == 0


def test_permits_from_before_a_reset_are_stale() -> None:
    """Settling a pre-reset permit does nothing."""
    h = Harness()
    old = [h.permit() for _ in range(5)]
    h.breaker.reset()
    for permit in old:
        h.breaker.record_failure(permit)
    assert h.breaker.snapshot().consecutive_failures == 0


def test_stale_probe_release_does_not_free_a_new_slot() -> None:
    """Releasing a probe from an earlier half-open period leaves the current slot taken."""
    h = Harness()
    h.trip()
    h.to_half_open()
    old_probe = h.permit()
    h.breaker.force_open(reason="401")
    h.to_half_open()
    current = h.permit()
    h.breaker.release(old_probe)
    assert h.breaker.snapshot().probes_in_flight == 1
    assert h.breaker.acquire() is None
    h.breaker.record_success(current)
    assert h.breaker.state is CLOSED


def test_settling_twice_is_a_no_op() -> None:
    """Only the first settle of a permit counts."""
    h = Harness()
    permit = h.permit()
    h.breaker.record_failure(permit)
    h.breaker.record_failure(permit)
    h.breaker.record_success(permit)
    h.breaker.record_throttle(permit)
    h.breaker.release(permit)
    snap = h.breaker.snapshot()
    assert (snap.consecutive_failures, snap.calls_in_window, snap.throttles_in_window) == (
        1,
        1,
        0,
    )


def test_double_release_of_a_probe_frees_one_slot() -> None:
    """Releasing a probe twice cannot free someone else's slot."""
    h = Harness(BreakerPolicy(half_open_probes=2, jitter=0.0))
    h.trip()
    h.to_half_open()
    first, _second = h.permit(), h.permit()
    h.breaker.release(first)
    h.breaker.release(first)
    assert h.breaker.snapshot().probes_in_flight == 1


def test_foreign_permit_is_refused() -> None:
    """A permit from another breaker is a bug and raises."""
    a, b = Harness(), Harness()
    with pytest.raises(ValueError, match="another CircuitBreaker"):
        a.breaker.record_success(b.permit())


def test_permit_repr() -> None:
    """A permit shows whether it is a probe and settled."""
    h = Harness()
    permit = h.permit()
    assert repr(permit) == "<Permit probe=False settled=False>"


# -- force_open --------------------------------------------------------------------------


def test_force_open_uses_the_long_open_time() -> None:
    """force_open opens at once for force_open_seconds, with the reason, without jitter."""
    h = Harness(BreakerPolicy(jitter=0.5), random=lambda: 0.9)
    h.breaker.force_open(reason="401 Unauthorized")
    assert h.transitions == [
        BreakerTransition(
            CLOSED, OPEN, h.clock.now, "forced open: 401 Unauthorized", h.clock.now + 300.0
        )
    ]
    assert h.breaker.ready_in() == 300.0
    assert h.breaker.snapshot().trips == 0  # does not grow later open times
    h.clock.advance(300.0)
    assert h.breaker.state is HALF_OPEN


def test_force_open_with_explicit_seconds() -> None:
    """force_open(seconds) overrides the policy's duration."""
    h = Harness()
    h.breaker.force_open(42.0, reason="model unknown")
    assert h.breaker.ready_in() == 42.0


def test_force_open_never_shortens_an_open_time() -> None:
    """Forcing a shorter time on an already open breaker keeps the longer one."""
    h = Harness()
    h.breaker.force_open(100.0, reason="403")
    h.breaker.force_open(10.0, reason="404")
    assert h.breaker.ready_in() == 100.0
    assert [(t.old, t.new) for t in h.transitions] == [(CLOSED, OPEN), (OPEN, OPEN)]
    h.breaker.force_open(500.0, reason="401")
    assert h.breaker.ready_in() == 500.0


def test_force_open_from_half_open_drops_the_probe() -> None:
    """A probe in flight when the breaker is forced open goes stale."""
    h = Harness()
    h.trip()
    h.to_half_open()
    probe = h.permit()
    h.breaker.force_open(reason="401")
    h.breaker.record_success(probe)
    assert h.breaker.state is OPEN
    assert h.transitions[-1].old is HALF_OPEN


def test_force_open_after_trips_then_probe_failure_keeps_growth() -> None:
    """The trip count survives force_open, so a failed probe afterwards still grows."""
    h = Harness()
    h.trip()
    h.breaker.force_open(1.0, reason="404")
    h.to_half_open()
    h.breaker.record_failure(h.permit())
    assert h.breaker.ready_in() == 10.0


@pytest.mark.parametrize("seconds", [-1.0, math.nan, math.inf])
def test_force_open_rejects_bad_seconds(seconds: float) -> None:
    """A negative or non-finite duration is a bug."""
    with pytest.raises(ValueError, match="seconds"):
        Harness().breaker.force_open(seconds, reason="x")


# -- cool_down ---------------------------------------------------------------------------


def test_cool_down_rejects_without_changing_state() -> None:
    """A Retry-After cool-down turns callers away but is not a failure."""
    h = Harness()
    h.fail(4)
    h.breaker.cool_down(2.0)
    assert h.breaker.acquire() is None
    assert h.breaker.acquire(force=True) is None  # the server's hint is a floor
    snap = h.breaker.snapshot()
    assert (snap.state, snap.cooldown_until, snap.consecutive_failures) == (
        CLOSED,
        h.clock.now + 2.0,
        4,
    )
    assert h.transitions == []
    assert h.breaker.ready_in() == 2.0
    h.clock.advance(2.0)
    assert h.breaker.snapshot().cooldown_until is None
    assert h.breaker.acquire() is not None


def test_cool_down_extends_but_never_shortens() -> None:
    """A later, longer hint extends the cool-down; a shorter one is ignored."""
    h = Harness()
    h.breaker.cool_down(10.0)
    h.clock.advance(1.0)
    h.breaker.cool_down(2.0)
    assert h.breaker.ready_in() == 9.0
    h.breaker.cool_down(20.0)
    assert h.breaker.ready_in() == 20.0


def test_cool_down_of_zero_is_harmless() -> None:
    """Retry-After: 0 does not block anything."""
    h = Harness()
    h.breaker.cool_down(0.0)
    assert h.breaker.acquire() is not None


def test_cool_down_also_holds_back_probes() -> None:
    """A half-open breaker that is cooling down admits no probe until the hint has passed."""
    h = Harness()
    h.trip()
    h.breaker.cool_down(8.0)
    h.clock.advance(6.0)
    assert h.breaker.state is HALF_OPEN
    assert h.breaker.acquire() is None
    assert h.breaker.ready_in() == 2.0


@pytest.mark.parametrize("seconds", [-0.5, math.nan, math.inf])
def test_cool_down_rejects_bad_seconds(seconds: float) -> None:
    """A negative or non-finite cool-down is a bug."""
    with pytest.raises(ValueError, match="seconds"):
        Harness().breaker.cool_down(seconds)


# -- ready_in ----------------------------------------------------------------------------


def test_ready_in_is_the_longer_of_open_time_and_cool_down() -> None:
    """ready_in counts both the open time and the cool-down."""
    h = Harness()
    h.trip()  # open for 5
    h.breaker.cool_down(3.0)
    assert h.breaker.ready_in() == 5.0
    h.breaker.cool_down(7.0)
    assert h.breaker.ready_in() == 7.0
    h.clock.advance(7.0)
    assert h.breaker.ready_in() == 0.0


def test_ready_in_picks_the_deployment_closest_to_reopening() -> None:
    """Of several open breakers, the smallest ready_in is the one to force."""
    clock = FakeClock()
    breakers = [CircuitBreaker(EXACT, clock=clock) for _ in range(3)]
    for seconds, breaker in zip([30.0, 4.0, 12.0], breakers, strict=True):
        breaker.force_open(seconds, reason="test")
    closest = min(breakers, key=CircuitBreaker.ready_in)
    assert closest is breakers[1]


# -- acquire(force=True) -----------------------------------------------------------------


def test_forced_probe_while_open_closes_on_success() -> None:
    """acquire(force=True) probes an open breaker; its success closes it."""
    h = Harness()
    h.trip()
    probe = h.permit(force=True)
    assert probe.probe
    assert h.breaker.state is OPEN
    h.breaker.record_success(probe)
    assert h.transitions[-1] == BreakerTransition(
        OPEN, CLOSED, h.clock.now, "probe succeeded", None
    )


def test_forced_probe_failure_reopens_for_longer() -> None:
    """A forced probe that fails re-opens the breaker (OPEN -> OPEN) for longer."""
    h = Harness()
    h.trip()
    h.clock.advance(1.0)
    h.breaker.record_failure(h.permit(force=True))
    assert h.transitions[-1] == BreakerTransition(
        OPEN, OPEN, h.clock.now, "probe failed", h.clock.now + 10.0
    )
    assert h.breaker.ready_in() == 10.0


def test_forced_probes_respect_the_probe_limit() -> None:
    """A second forced probe is refused while the first is in flight: probe, don't flood."""
    h = Harness()
    h.trip()
    probe = h.permit(force=True)
    assert h.breaker.acquire(force=True) is None
    h.breaker.release(probe)
    assert h.breaker.acquire(force=True) is not None


def test_forced_probe_outlives_the_open_time() -> None:
    """A forced probe taken while open keeps its slot and its say once half-open."""
    h = Harness()
    h.trip()
    probe = h.permit(force=True)
    h.to_half_open()
    assert h.breaker.acquire() is None
    h.breaker.record_success(probe)
    assert h.breaker.state is CLOSED


def test_force_is_a_plain_acquire_when_closed_or_half_open() -> None:
    """force=True only matters while open."""
    h = Harness()
    assert not h.permit(force=True).probe
    h.trip()
    h.to_half_open()
    assert h.permit(force=True).probe
    assert h.breaker.acquire(force=True) is None


# -- reset -------------------------------------------------------------------------------


def test_reset_closes_and_clears_everything() -> None:
    """reset() goes back to closed with counters, trips and cool-down cleared."""
    h = Harness()
    h.breaker.record_throttle(h.permit())
    h.trip()
    h.breaker.cool_down(60.0)
    h.breaker.reset()
    assert h.transitions[-1] == BreakerTransition(OPEN, CLOSED, h.clock.now, "reset", None)
    assert h.breaker.snapshot() == BreakerSnapshot(
        state=CLOSED,
        open_until=None,
        cooldown_until=None,
        consecutive_failures=0,
        failure_rate=0.0,
        calls_in_window=0,
        trips=0,
        probes_in_flight=0,
        throttles_in_window=0,
    )
    h.trip()
    assert h.breaker.ready_in() == 5.0  # growth starts over


def test_reset_while_closed_reports_no_transition() -> None:
    """Resetting a closed breaker clears its counters without a state change."""
    h = Harness()
    h.fail(3)
    h.breaker.reset()
    assert h.transitions == []
    assert h.breaker.snapshot().consecutive_failures == 0


# -- every transition and reason ---------------------------------------------------------


def test_every_reason_is_reported() -> None:
    """One walk through the machine reports every documented transition reason."""
    h = Harness(BreakerPolicy(consecutive_failures=2, minimum_calls=2, jitter=0.0))
    h.fail(2)  # CLOSED -> OPEN consecutive failures
    h.to_half_open()  # OPEN -> HALF_OPEN open time elapsed
    h.breaker.record_failure(h.permit())  # HALF_OPEN -> OPEN probe failed
    h.to_half_open()
    h.breaker.record_success(h.permit())  # HALF_OPEN -> CLOSED probe succeeded
    h.fail()
    h.succeed()
    h.breaker.reset()  # no transition: already closed
    h.breaker.force_open(reason="404 Not Found")  # CLOSED -> OPEN forced
    h.breaker.reset()  # OPEN -> CLOSED reset
    h2 = Harness(BreakerPolicy(consecutive_failures=5, minimum_calls=2, jitter=0.0))
    h2.succeed()
    h2.fail()  # 1 of 2: failure rate
    assert [(t.old, t.new, t.reason) for t in h.transitions + h2.transitions] == [
        (CLOSED, OPEN, "consecutive failures"),
        (OPEN, HALF_OPEN, "open time elapsed"),
        (HALF_OPEN, OPEN, "probe failed"),
        (OPEN, HALF_OPEN, "open time elapsed"),
        (HALF_OPEN, CLOSED, "probe succeeded"),
        (CLOSED, OPEN, "forced open: 404 Not Found"),
        (OPEN, CLOSED, "reset"),
        (CLOSED, OPEN, "failure rate"),
    ]
    for t in h.transitions + h2.transitions:
        assert (t.open_until is not None) == (t.new is OPEN)


def test_works_without_a_transition_hook() -> None:
    """on_transition is optional."""
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock)
    for _ in range(5):
        permit = breaker.acquire()
        assert permit is not None
        breaker.record_failure(permit)
    assert breaker.state is OPEN
    assert 5.0 <= breaker.ready_in() <= 6.0  # default jitter: up to +20%
    assert repr(breaker) == "<CircuitBreaker state=open trips=1>"


def test_repr_never_moves_the_state() -> None:
    """repr reads no clock, so it cannot cause a transition."""
    h = Harness()
    h.trip()
    h.clock.advance(100.0)
    assert "state=open" in repr(h.breaker)
    assert len(h.transitions) == 1


# -- properties --------------------------------------------------------------------------


OUTCOMES = st.sampled_from(["success", "failure", "throttle", "release"])
SETTLE: dict[str, Callable[[CircuitBreaker, Permit], None]] = {
    "success": CircuitBreaker.record_success,
    "failure": CircuitBreaker.record_failure,
    "throttle": CircuitBreaker.record_throttle,
    "release": CircuitBreaker.release,
}


class BreakerMachine(RuleBasedStateMachine):
    """Random acquire / settle / advance sequences; invariants checked after every step."""

    permits = Bundle("permits")
    settled = Bundle("settled")

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.transitions: list[BreakerTransition] = []
        self.rng = random_module.Random(0)
        self.breaker: CircuitBreaker
        # id(permit) -> number of (re)open transitions when it was handed out
        self.opens_at_acquire: dict[int, int] = {}
        self.live: list[Permit] = []

    @initialize(
        consecutive=st.integers(1, 6),
        minimum=st.integers(1, 8),
        rate=st.sampled_from([0.25, 0.5, 1.0]),
        probes=st.integers(1, 3),
        jitter=st.sampled_from([0.0, 0.2, 1.0]),
    )
    def build(
        self, consecutive: int, minimum: int, rate: float, probes: int, jitter: float
    ) -> None:
        self.policy = BreakerPolicy(
            consecutive_failures=consecutive,
            minimum_calls=minimum,
            failure_rate=rate,
            window_seconds=20.0,
            open_seconds=2.0,
            max_open_seconds=30.0,
            half_open_probes=probes,
            jitter=jitter,
            force_open_seconds=50.0,
        )
        self.breaker = CircuitBreaker(
            self.policy,
            clock=self.clock,
            random=self.rng.random,
            on_transition=self.transitions.append,
        )

    def opens(self) -> int:
        return sum(t.new is OPEN for t in self.transitions)

    @rule(target=permits, force=st.booleans())
    def acquire(self, force: bool) -> Permit | None:
        permit = self.breaker.acquire(force=force)
        if permit is not None:
            self.opens_at_acquire[id(permit)] = self.opens()
            self.live.append(permit)
        return permit

    def _settle(self, permit: Permit, outcome: str) -> None:
        was_closed = self.breaker.state is CLOSED
        SETTLE[outcome](self.breaker, permit)
        if outcome == "success" and not was_closed and self.breaker.state is CLOSED:
            # Only a probe from the current open period may close the breaker.
            assert permit.probe
            assert self.opens() == self.opens_at_acquire[id(permit)]
        if outcome != "success" and not was_closed:
            assert self.breaker.state is not CLOSED

    @rule(target=settled, permit=consumes(permits), outcome=OUTCOMES)
    def settle(self, permit: Permit | None, outcome: str) -> Permit | None:
        if permit is not None:
            self._settle(permit, outcome)
            self.live.remove(permit)
        return permit

    @rule(outcome=OUTCOMES, force=st.booleans())
    def call(self, outcome: str, force: bool) -> None:
        """Acquire and settle at once: traffic that moves the window and the streak."""
        permit = self.breaker.acquire(force=force)
        if permit is not None:
            self.opens_at_acquire[id(permit)] = self.opens()
            self._settle(permit, outcome)

    @rule(permit=settled, outcome=OUTCOMES)
    def settle_again(self, permit: Permit | None, outcome: str) -> None:
        """Settling an already settled permit changes nothing at all."""
        if permit is None:
            return
        before = self.breaker.snapshot()
        transitions = len(self.transitions)
        SETTLE[outcome](self.breaker, permit)
        assert self.breaker.snapshot() == before
        assert len(self.transitions) == transitions

    @rule(seconds=st.floats(0.0, 40.0))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(
        action=st.sampled_from(["cool_down", "force_open", "force_open_default", "reset"]),
        seconds=st.floats(0.0, 60.0),
    )
    def disrupt(self, action: str, seconds: float) -> None:
        """The rarer events: Retry-After hints, 401s, operator resets."""
        before = self.breaker.snapshot()
        if action == "cool_down":
            self.breaker.cool_down(seconds)
            after = self.breaker.snapshot()
            # A cool-down changes nothing but the cool-down, and never shortens it.
            assert dataclasses.replace(after, cooldown_until=None) == dataclasses.replace(
                before, cooldown_until=None
            )
            if self.clock.now + seconds > self.clock.now:
                assert after.cooldown_until is not None
                assert after.cooldown_until >= self.clock.now + seconds
            if before.cooldown_until is not None:
                assert after.cooldown_until is not None
                assert after.cooldown_until >= before.cooldown_until
        elif action == "reset":
            self.breaker.reset()
            assert self.breaker.snapshot().state is CLOSED
        else:
            self.breaker.force_open(seconds if action == "force_open" else None, reason="test")
            after = self.breaker.snapshot()
            if after.state is OPEN:  # unless a zero-length force already elapsed
                assert after.trips == before.trips
                assert after.open_until is not None
                if before.open_until is not None:
                    assert after.open_until >= before.open_until

    @invariant()
    def consistent(self) -> None:
        if not hasattr(self, "breaker"):
            return
        snap = self.breaker.snapshot()
        now = self.clock.now
        assert snap.state in (CLOSED, OPEN, HALF_OPEN)
        assert 0 <= snap.probes_in_flight <= self.policy.half_open_probes
        live_probes = [p for p in self.live if p.probe]
        assert snap.probes_in_flight <= len(live_probes)
        if snap.state is CLOSED:
            assert snap.probes_in_flight == 0
            assert snap.open_until is None
        if snap.state is OPEN:
            assert snap.open_until is not None
            assert snap.open_until > now
            assert self.breaker.ready_in() > 0.0
        assert 0.0 <= snap.failure_rate <= 1.0
        assert snap.calls_in_window >= 0
        assert snap.throttles_in_window >= 0
        if snap.cooldown_until is not None:
            assert snap.cooldown_until > now
        assert self.breaker.ready_in() >= 0.0
        for t in self.transitions:
            assert t.new in (CLOSED, OPEN, HALF_OPEN)
            if t.new is OPEN:
                assert t.open_until is not None
                assert t.open_until >= t.at
                if t.reason in ("consecutive failures", "failure rate", "probe failed"):
                    assert t.open_until - t.at <= self.policy.max_open_seconds * (
                        1 + self.policy.jitter
                    )
                    assert t.open_until - t.at >= self.policy.open_seconds


BreakerMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_breaker_machine = BreakerMachine.TestCase
