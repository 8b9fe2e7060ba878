"""The live side of a pool: each deployment with its breaker, and the pool's retry budget.

A request walks the deployments in their configured order. A deployment whose breaker (or a
``Retry-After`` cooldown) keeps it away is skipped; when every deployment is kept away, the
one closest to being admitted again is tried anyway instead of failing without trying.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from .._config._values import Deployment, Pool, Timeouts
from .._core._breaker import BreakerPolicy, BreakerTransition, CircuitBreaker, Permit
from .._core._retry import RetryBudget, RetryPolicy
from .._fleet._shared_state import PROBE_TTL_MARGIN, SharedCircuitBreaker, SharedState
from .._observe._events import BreakerTransitioned, Event, EventHook, emit
from .._observe._logging import breaker_log_level, log_extra
from ._attempt import Endpoint

__all__ = ["LivePool", "LiveDeployment", "build_live_pool"]

Clock = Callable[[], float]
logger = logging.getLogger("resilient_tts")


@dataclass(eq=False)
class LiveDeployment:
    """A deployment as the client uses it: its configuration, limits, breaker and endpoint."""

    pool: str
    config: Deployment
    timeouts: Timeouts
    breaker: CircuitBreaker
    endpoint: Endpoint = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.endpoint = Endpoint.of(self.config)

    @property
    def name(self) -> str:
        return self.config.name

    async def admit(self, *, force: bool = False) -> Permit | None:
        """A breaker permit for one attempt, or None to go elsewhere. Async so that a shared
        breaker (one state for a fleet of processes) can consult its store here."""
        if isinstance(self.breaker, SharedCircuitBreaker):
            return await self.breaker.admit(force=force)
        return self.breaker.acquire(force=force)


@dataclass(eq=False)
class LivePool:
    name: str
    deployments: tuple[LiveDeployment, ...]
    budget: RetryBudget
    retry: RetryPolicy
    deadline: float
    hedge_delay: float | None
    hooks: tuple[EventHook, ...] = ()

    def emit(self, event: Event) -> None:
        if self.hooks:
            emit(self.hooks, event)

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
    hooks: tuple[EventHook, ...] = (),
    shared: SharedState | None = None,
) -> LivePool:
    deployments = []
    for deployment in pool.deployments:
        timeouts = Timeouts(
            deadline=_first(pool.deadline, defaults.deadline),
            attempt=_first(deployment.attempt_timeout, pool.attempt_timeout, defaults.attempt),
            first_byte=_first(
                deployment.first_byte_timeout, pool.first_byte_timeout, defaults.first_byte
            ),
            stall=_first(deployment.stall_timeout, pool.stall_timeout, defaults.stall),
        )
        open_seconds = _first(
            deployment.breaker_open_seconds, pool.breaker_open_seconds, breaker_open_seconds
        )
        policy = _with_open_seconds(breaker_policy, open_seconds)
        reporter = _reporter(name, deployment.name, hooks)
        breaker: CircuitBreaker
        if shared is None:
            breaker = CircuitBreaker(policy, clock=clock, on_transition=reporter)
        else:
            # A probe permit held by a process that died expires soon after its attempt would.
            probe_ttl = timeouts.attempt + PROBE_TTL_MARGIN
            breaker = shared.breaker_for(
                name,
                deployment.name,
                policy,
                clock=clock,
                probe_ttl=probe_ttl,
                on_transition=reporter,
            )
        deployments.append(
            LiveDeployment(pool=name, config=deployment, timeouts=timeouts, breaker=breaker)
        )
    return LivePool(
        name=name,
        deployments=tuple(deployments),
        budget=retry.create_budget(clock=clock),
        retry=retry,
        deadline=_first(pool.deadline, defaults.deadline),
        hedge_delay=pool.hedge_delay,
        hooks=hooks,
    )


def _reporter(
    pool: str, deployment: str, hooks: tuple[EventHook, ...]
) -> Callable[[BreakerTransition], None]:
    def report(transition: BreakerTransition) -> None:
        logger.log(
            breaker_log_level(transition.new),
            "breaker of %r: %s -> %s (%s)",
            deployment,
            transition.old.value,
            transition.new.value,
            transition.reason,
            extra=log_extra(pool, deployment, breaker_state=transition.new.value),
        )
        event = BreakerTransitioned(
            pool=pool,
            deployment=deployment,
            old=transition.old,
            new=transition.new,
            reason=transition.reason,
            open_until=transition.open_until,
        )
        emit(hooks, event)

    return report


def _with_open_seconds(policy: BreakerPolicy, open_seconds: float) -> BreakerPolicy:
    return replace(
        policy,
        open_seconds=open_seconds,
        max_open_seconds=max(policy.max_open_seconds, open_seconds),
    )


def _first(*values: float | None) -> float:
    for value in values:
        if value is not None:
            return value
    raise AssertionError("the last value is always a default")
