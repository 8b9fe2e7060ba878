"""The live side of a pool: each deployment with its breaker, and the pool's retry budget.

A request walks the deployments in their configured order. A deployment whose breaker (or a
``Retry-After`` cooldown) keeps it away is skipped; when every deployment is kept away, the
one closest to being admitted again is tried anyway instead of failing without trying.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from openai import AsyncOpenAI

from ._breaker import BreakerPolicy, BreakerTransition, CircuitBreaker
from ._config import Deployment, Pool, Timeouts
from ._retry import RetryBudget, RetryPolicy

__all__ = ["LivePool", "LiveDeployment", "build_live_pool"]

Clock = Callable[[], float]


@dataclass(eq=False)
class LiveDeployment:
    """A deployment as the client uses it: its configuration, limits, breaker and connection."""

    pool: str
    config: Deployment
    timeouts: Timeouts
    breaker: CircuitBreaker
    # Built on first use inside the event loop: an aiohttp session belongs to one loop.
    openai: AsyncOpenAI | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.config.name


@dataclass(eq=False)
class LivePool:
    name: str
    deployments: tuple[LiveDeployment, ...]
    budget: RetryBudget
    retry: RetryPolicy
    deadline: float
    hedge_delay: float | None

    def closest_to_ready(self, candidates: list[LiveDeployment]) -> LiveDeployment | None:
        """The deployment whose breaker or cooldown lets it in soonest; first in order on ties."""
        return min(candidates, key=lambda deployment: deployment.breaker.ready_in(), default=None)


def build_live_pool(
    name: str,
    pool: Pool,
    *,
    defaults: Timeouts,
    breaker_open_seconds: float,
    breaker_policy: BreakerPolicy,
    retry: RetryPolicy,
    clock: Clock,
    on_transition: Callable[[LiveDeployment, BreakerTransition], None] | None = None,
) -> LivePool:
    deployments = []
    for deployment in pool.deployments:
        timeouts = Timeouts(
            deadline=_first(pool.deadline, defaults.deadline),
            attempt=_first(deployment.attempt_timeout, pool.attempt_timeout, defaults.attempt),
            first_byte=_first(deployment.first_byte_timeout, pool.first_byte_timeout, defaults.first_byte),
            stall=_first(deployment.stall_timeout, pool.stall_timeout, defaults.stall),
        )
        open_seconds = _first(deployment.breaker_open_seconds, pool.breaker_open_seconds, breaker_open_seconds)
        policy = _with_open_seconds(breaker_policy, open_seconds)
        live = LiveDeployment(pool=name, config=deployment, timeouts=timeouts, breaker=CircuitBreaker(policy, clock=clock))
        if on_transition is not None:
            live.breaker.on_transition = _bind(on_transition, live)
        deployments.append(live)
    return LivePool(
        name=name,
        deployments=tuple(deployments),
        budget=retry.create_budget(clock=clock),
        retry=retry,
        deadline=_first(pool.deadline, defaults.deadline),
        hedge_delay=pool.hedge_delay,
    )


def _bind(
    callback: Callable[[LiveDeployment, BreakerTransition], None], deployment: LiveDeployment
) -> Callable[[BreakerTransition], None]:
    return lambda transition: callback(deployment, transition)


def _with_open_seconds(policy: BreakerPolicy, open_seconds: float) -> BreakerPolicy:
    from dataclasses import replace

    return replace(policy, open_seconds=open_seconds, max_open_seconds=max(policy.max_open_seconds, open_seconds))


def _first(*values: float | None) -> float:
    for value in values:
        if value is not None:
            return value
    raise AssertionError("the last value is always a default")
