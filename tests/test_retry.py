"""Backoff delays, Retry-After parsing and the retry budget: pure maths, no sleeping."""

from __future__ import annotations

import dataclasses
import email.utils
import itertools
import math
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilient_tts._core._retry import (
    RetryBudget,
    RetryPolicy,
    backoff_delays,
    parse_retry_after,
    retry_wait,
)


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Headers(Mapping[str, str]):
    """A case-insensitive mapping, like httpx.Headers."""

    def __init__(self, items: dict[str, str]) -> None:
        self._items = {k.lower(): v for k, v in items.items()}

    def __getitem__(self, key: str) -> str:
        return self._items[key.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def take(delays: Iterator[float], n: int) -> list[float]:
    return list(itertools.islice(delays, n))


def http_date(epoch_seconds: float) -> str:
    return email.utils.formatdate(epoch_seconds, usegmt=True)


# -- backoff_delays ----------------------------------------------------------------------


def test_delays_follow_capped_exponential_caps() -> None:
    """With the top draw, the delays are the caps: 0.05 doubling to 2.0, then 2.0 forever."""
    delays = take(backoff_delays(random=lambda: 1.0), 9)
    assert delays == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0])


def test_delays_are_fully_jittered() -> None:
    """Each delay is its cap times one draw of `random` (full jitter)."""
    draws = iter([0.5, 0.0, 0.25])
    assert take(backoff_delays(base=1.0, max_delay=10.0, random=lambda: next(draws)), 3) == [
        0.5,
        0.0,
        1.0,
    ]


def test_first_delay_is_a_number() -> None:
    """backoff's priming None never leaks out."""
    first = next(backoff_delays())
    assert isinstance(first, float)
    assert 0.0 <= first <= 0.05


def test_delays_never_end() -> None:
    """The sequence is endless; the caller stops (deadline, budget)."""
    assert len(take(backoff_delays(), 10_000)) == 10_000


def test_each_sequence_starts_over() -> None:
    """Every call gives a fresh sequence from the base."""
    first = backoff_delays(random=lambda: 1.0)
    take(first, 5)
    assert next(backoff_delays(random=lambda: 1.0)) == 0.05


def test_custom_factor_and_cap() -> None:
    """factor and max_delay shape the caps."""
    delays = take(backoff_delays(base=0.5, factor=3.0, max_delay=5.0, random=lambda: 1.0), 4)
    assert delays == pytest.approx([0.5, 1.5, 4.5, 5.0])


def test_max_delay_below_base_caps_from_the_start() -> None:
    """A cap below the base is honoured from the first delay."""
    assert take(backoff_delays(base=1.0, max_delay=0.2, random=lambda: 1.0), 3) == [0.2] * 3


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"base": 0.0}, "base"),
        ({"base": -1.0}, "base"),
        ({"factor": 0.5}, "factor"),
        ({"max_delay": -1.0}, "max_delay"),
        ({"max_delay": math.inf}, "max_delay"),
        ({"base": math.nan}, "base"),
    ],
)
def test_delays_reject_nonsense(kwargs: dict[str, Any], field: str) -> None:
    """Nonsense parameters raise ValueError naming the parameter, at the first delay."""
    with pytest.raises(ValueError, match=field):
        next(backoff_delays(**kwargs))


@given(
    base=st.floats(0.001, 10.0),
    factor=st.floats(1.0, 5.0),
    max_delay=st.floats(0.0, 60.0),
    draws=st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=1, max_size=30),
)
def test_delays_stay_within_their_caps(
    base: float, factor: float, max_delay: float, draws: list[float]
) -> None:
    """The n-th delay is in [0, min(base * factor**n, max_delay)], whatever the draw."""
    it = iter(draws)
    delays = take(
        backoff_delays(base=base, factor=factor, max_delay=max_delay, random=lambda: next(it)),
        len(draws),
    )
    for n, (delay, draw) in enumerate(zip(delays, draws, strict=True)):
        cap = min(base * factor**n, max_delay)
        assert 0.0 <= delay <= cap * (1 + 1e-12)
        assert delay == pytest.approx(cap * draw)


@given(base=st.floats(0.001, 10.0), factor=st.floats(1.0, 5.0), max_delay=st.floats(0.0, 60.0))
def test_caps_never_shrink(base: float, factor: float, max_delay: float) -> None:
    """The caps grow monotonically up to max_delay and stay there."""
    caps = take(
        backoff_delays(base=base, factor=factor, max_delay=max_delay, random=lambda: 1.0), 50
    )
    assert all(a <= b for a, b in itertools.pairwise(caps))
    assert all(cap <= max_delay for cap in caps)


# -- parse_retry_after -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("2", 2.0), ("0", 0.0), (" 3 ", 3.0), ("120", 120.0), ("1.5", 1.5), ("86400", 86400.0)],
)
def test_retry_after_seconds(value: str, expected: float) -> None:
    """Retry-After as delay-seconds (RFC 9110 §10.2.3), fractions accepted."""
    assert parse_retry_after({"Retry-After": value}) == expected


@pytest.mark.parametrize(("value", "expected"), [("1500", 1.5), ("0", 0.0), ("250.5", 0.2505)])
def test_retry_after_ms(value: str, expected: float) -> None:
    """retry-after-ms (OpenAI, Azure) is milliseconds."""
    assert parse_retry_after({"retry-after-ms": value}) == pytest.approx(expected)


def test_retry_after_ms_wins_over_retry_after() -> None:
    """With both headers, the finer-grained milliseconds win."""
    assert parse_retry_after({"Retry-After": "2", "retry-after-ms": "1234"}) == 1.234


def test_bad_retry_after_ms_falls_back_to_retry_after() -> None:
    """An unusable retry-after-ms does not hide a usable Retry-After."""
    headers = {"retry-after-ms": "soon", "Retry-After": "7"}
    assert parse_retry_after(headers) == 7.0
    assert parse_retry_after({"retry-after-ms": "-5", "Retry-After": "7"}) == 7.0


def test_retry_after_http_date() -> None:
    """An HTTP-date is turned into seconds from `now` (wall clock)."""
    now = 1_700_000_000.0
    assert parse_retry_after({"Retry-After": http_date(now + 90)}, now=now) == 90.0
    assert parse_retry_after({"Retry-After": "Tue, 14 Nov 2023 22:13:40 GMT"}, now=now) == 20.0


def test_retry_after_http_date_in_the_past_means_now() -> None:
    """A date already passed means retry at once: 0.0, not None."""
    assert parse_retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0


def test_retry_after_http_date_with_unknown_zone_is_utc() -> None:
    """A "-0000" zone (unknown) parses without tzinfo; HTTP-dates are UTC anyway."""
    now = 1_700_000_000.0
    value = "Tue, 14 Nov 2023 22:13:40 -0000"
    assert parse_retry_after({"Retry-After": value}, now=now) == 20.0


def test_retry_after_http_date_defaults_to_the_wall_clock() -> None:
    """Without `now`, the date is compared with time.time()."""
    hint = parse_retry_after({"Retry-After": http_date(time.time() + 120)})
    assert hint is not None
    assert 118.0 <= hint <= 120.0


@pytest.mark.parametrize(
    "value",
    [
        "",
        "soon",
        "-1",
        "+5",
        "1e3",
        "inf",
        "nan",
        "0x10",
        "1_000",
        "٣",  # an Arabic-Indic digit: float() takes it, RFC 9110 does not
        "Wed, 32 Oct 2015 07:28:00 GMT",
        "Wed, 21 Oct 2015 25:28:00 GMT",
    ],
)
def test_garbage_retry_after_is_ignored(value: str) -> None:
    """Invalid, negative or absurd values give None, never an exception."""
    assert parse_retry_after({"Retry-After": value}) is None
    assert parse_retry_after({"retry-after-ms": value}) is None


def test_absurd_retry_after_is_ignored() -> None:
    """More than a day is a misconfigured server, not advice."""
    assert parse_retry_after({"Retry-After": "86401"}) is None


def test_absurd_retry_after_ms_is_ignored() -> None:
    """More than a day of milliseconds is ignored too."""
    assert parse_retry_after({"retry-after-ms": "86400000"}) == 86400.0
    assert parse_retry_after({"retry-after-ms": "86400001"}) is None


def test_http_date_more_than_a_day_away_is_ignored() -> None:
    """A date far in the future is as absurd as a huge delay."""
    now = 1_700_000_000.0
    assert parse_retry_after({"Retry-After": http_date(now + 2 * 86400)}, now=now) is None


def test_no_hint_is_none() -> None:
    """No header, no hint."""
    assert parse_retry_after({}) is None
    assert parse_retry_after({"content-type": "application/json"}) is None


@pytest.mark.parametrize("name", ["retry-after", "Retry-After", "RETRY-AFTER", "rEtRy-AfTeR"])
def test_header_names_are_case_insensitive(name: str) -> None:
    """Plain dicts in any case work, as do case-insensitive mappings."""
    assert parse_retry_after({name: "4"}) == 4.0
    assert parse_retry_after(Headers({name: "4"})) == 4.0
    assert parse_retry_after({name + "-MS": "400"}) == 0.4


@given(st.text())
def test_parse_retry_after_never_raises(value: str) -> None:
    """Any header text gives None or a sane number of seconds."""
    for name in ("Retry-After", "retry-after-ms"):
        hint = parse_retry_after({name: value}, now=1_700_000_000.0)
        assert hint is None or 0.0 <= hint <= 86400.0


# -- retry_wait --------------------------------------------------------------------------


def test_retry_wait_without_hint_is_the_backoff() -> None:
    """No hint: wait the jittered backoff."""
    assert retry_wait(None, 0.07) == 0.07


def test_retry_after_is_a_floor() -> None:
    """A hint is never shortened by jitter; a longer backoff still applies."""
    assert retry_wait(2.0, 0.07) == 2.0
    assert retry_wait(0.0, 0.07) == 0.07
    assert retry_wait(1.0, 1.5) == 1.5


@given(hint=st.none() | st.floats(0.0, 86400.0), delay=st.floats(0.0, 60.0))
def test_retry_wait_never_goes_below_the_hint(hint: float | None, delay: float) -> None:
    """The wait is at least the hint and at least the backoff."""
    wait = retry_wait(hint, delay)
    assert wait >= delay
    assert hint is None or wait >= hint


# -- RetryBudget -------------------------------------------------------------------------


def test_budget_starts_full() -> None:
    """A new budget holds `capacity` tokens, so the first failures can be retried."""
    budget = RetryBudget(capacity=3.0, clock=FakeClock())
    assert budget.balance == 3.0
    assert [budget.try_spend() for _ in range(4)] == [True, True, True, False]
    assert budget.balance == 0.0


def test_budget_deposits_a_ratio_per_request() -> None:
    """Five requests at ratio 0.2 earn one retry."""
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, min_per_second=0.0, capacity=10.0, clock=clock)
    while budget.try_spend():
        pass
    for _ in range(4):
        budget.deposit()
    assert not budget.try_spend()
    budget.deposit()
    assert budget.try_spend()
    assert budget.balance == pytest.approx(0.0)


def test_budget_refills_over_time() -> None:
    """min_per_second tokens trickle in, so quiet pools can still retry."""
    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, min_per_second=2.0, capacity=10.0, clock=clock)
    while budget.try_spend():
        pass
    clock.advance(0.25)
    assert budget.balance == 0.5
    assert not budget.try_spend()
    clock.advance(0.25)
    assert budget.try_spend()


def test_budget_is_capped() -> None:
    """Neither deposits nor time push the balance over capacity."""
    clock = FakeClock()
    budget = RetryBudget(ratio=1.0, min_per_second=1.0, capacity=4.0, clock=clock)
    for _ in range(100):
        budget.deposit()
    clock.advance(3600.0)
    assert budget.balance == 4.0


def test_budget_stops_a_retry_storm() -> None:
    """When everything fails, retries settle at `ratio` of requests (plus the reserve)."""
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, min_per_second=0.0, capacity=10.0, clock=clock)
    retries = 0
    for _ in range(1000):
        budget.deposit()
        retries += budget.try_spend()
    assert retries == pytest.approx(10 + 0.2 * 1000, abs=1)


def test_budget_with_capacity_below_one_never_retries() -> None:
    """capacity < 1 disables retries."""
    budget = RetryBudget(capacity=0.5, clock=FakeClock())
    budget.deposit()
    assert not budget.try_spend()


def test_budget_tolerates_a_clock_that_steps_back() -> None:
    """A clock going backwards refills nothing and breaks nothing."""
    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, min_per_second=1.0, capacity=2.0, clock=clock)
    budget.try_spend()
    budget.try_spend()
    clock.advance(-50.0)
    assert budget.balance == 0.0
    clock.advance(1.0)
    assert budget.balance == 1.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ratio": -0.1}, "ratio"),
        ({"min_per_second": -1.0}, "min_per_second"),
        ({"capacity": -1.0}, "capacity"),
        ({"capacity": math.inf}, "capacity"),
        ({"ratio": math.nan}, "ratio"),
    ],
)
def test_budget_rejects_nonsense(kwargs: dict[str, float], field: str) -> None:
    """Negative or non-finite settings raise ValueError naming the setting."""
    with pytest.raises(ValueError, match=field):
        RetryBudget(clock=FakeClock(), **kwargs)


def test_budget_repr() -> None:
    """The repr shows the balance and settings."""
    budget = RetryBudget(clock=FakeClock())
    assert repr(budget) == "<RetryBudget balance=10.00 ratio=0.2 min_per_second=1.0 capacity=10.0>"


@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["deposit", "spend", "advance"]), st.floats(0.0, 5.0)),
        max_size=60,
    ),
    ratio=st.floats(0.0, 1.0),
    min_per_second=st.floats(0.0, 5.0),
    capacity=st.floats(0.0, 20.0),
)
def test_budget_balance_stays_in_bounds(
    steps: list[tuple[str, float]], ratio: float, min_per_second: float, capacity: float
) -> None:
    """The balance is always within [0, capacity]; a spend takes exactly one token."""
    clock = FakeClock()
    budget = RetryBudget(ratio=ratio, min_per_second=min_per_second, capacity=capacity, clock=clock)
    for action, seconds in steps:
        if action == "deposit":
            budget.deposit()
        elif action == "advance":
            clock.advance(seconds)
        else:
            before = budget.balance
            spent = budget.try_spend()
            assert spent == (before >= 1.0)
            assert budget.balance == pytest.approx(before - 1.0 if spent else before)
        assert 0.0 <= budget.balance <= capacity


# -- RetryPolicy -------------------------------------------------------------------------


def test_policy_defaults() -> None:
    """The defaults match backoff_delays and RetryBudget."""
    assert dataclasses.asdict(RetryPolicy()) == {
        "base": 0.05,
        "factor": 2.0,
        "max_delay": 2.0,
        "budget_ratio": 0.2,
        "budget_min_per_second": 1.0,
        "budget_capacity": 10.0,
    }


def test_policy_is_frozen() -> None:
    """A policy is an immutable value."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        RetryPolicy().base = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("base", 0.0),
        ("factor", 0.9),
        ("max_delay", -1.0),
        ("budget_ratio", -0.5),
        ("budget_min_per_second", math.inf),
        ("budget_capacity", -1.0),
        ("base", True),
        ("max_delay", "2"),
    ],
)
def test_policy_rejects_nonsense(field: str, value: Any) -> None:
    """Nonsense raises ValueError naming the field."""
    with pytest.raises(ValueError, match=field):
        RetryPolicy(**{field: value})


def test_policy_makes_delays() -> None:
    """policy.delays() uses the policy's base, factor and cap."""
    policy = RetryPolicy(base=1.0, factor=10.0, max_delay=50.0)
    assert take(policy.delays(random=lambda: 1.0), 3) == [1.0, 10.0, 50.0]


def test_policy_makes_budgets() -> None:
    """policy.create_budget() uses the policy's ratio, refill and capacity."""
    clock = FakeClock()
    budget = RetryPolicy(
        budget_ratio=0.5, budget_min_per_second=0.0, budget_capacity=2.0
    ).create_budget(clock=clock)
    assert budget.balance == 2.0
    assert budget.try_spend()
    assert budget.try_spend()
    budget.deposit()
    budget.deposit()
    assert budget.try_spend()
