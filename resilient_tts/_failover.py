"""The one retry and failover loop, under one deadline.

A request walks its pool in order. Each failure's `Verdict` decides the rest: one more try on
the same deployment (budget allowing, after a jittered backoff), on to the next deployment, or
a deployment kept as a last resort because it asked us to wait (``Retry-After``) or throttled
us. When every breaker keeps us away, the deployment closest to reopening is tried anyway.
Nothing ever sleeps past the deadline; a wait hint that does not fit is not waited for.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio

from . import _events as events
from ._attempt import AttemptError, DeploymentRequest, adapt_request, first_byte_at
from ._breaker import Permit
from ._classify import BreakerEffect, FailureKind, Retry, Verdict, verdict_for
from ._exceptions import AllDeploymentsFailedError, DeadlineExceededError
from ._logging import log_extra
from ._pool import LiveDeployment, LivePool
from ._request import SpeechRequest
from ._response import Attempt, AttemptOutcome, describe_attempts
from ._retry import retry_wait

__all__ = ["AttemptFunction", "Served", "run_with_failover"]

logger = logging.getLogger("resilient_tts")

T = TypeVar("T")
AttemptFunction = Callable[[LiveDeployment, DeploymentRequest], Awaitable[T]]


@dataclass(frozen=True, slots=True)
class Served(Generic[T]):
    value: T
    deployment: LiveDeployment
    sent: DeploymentRequest
    attempts: tuple[Attempt, ...]


@dataclass
class _Run(Generic[T]):
    pool: LivePool
    request: SpeechRequest
    attempt: AttemptFunction[T]
    clock: Callable[[], float]
    deadline: float
    attempts: list[Attempt] = field(default_factory=list)
    last_failure: tuple[str, FailureKind] | None = None  # (deployment, kind), for FailedOver
    # Deployments that asked us to wait (Retry-After) or throttled us, with when to come back.
    last_resort: list[tuple[float, int, LiveDeployment]] = field(default_factory=list)

    def remaining(self) -> float:
        return self.deadline - self.clock()


async def run_with_failover(
    pool: LivePool,
    request: SpeechRequest,
    attempt: AttemptFunction[T],
    *,
    clock: Callable[[], float],
    candidates: tuple[LiveDeployment, ...] | None = None,
) -> Served[T]:
    """Runs `attempt` on the pool's deployments until one succeeds; raises the story otherwise."""
    deadline = clock() + (request.timeout if request.timeout is not None else pool.deadline)
    run = _Run(pool, request, attempt, clock, deadline)
    order = candidates if candidates is not None else pool.deployments
    pool.budget.deposit()
    admitted_any = False
    for deployment in order:
        if run.remaining() <= 0:
            break
        permit = await deployment.admit()
        if permit is None:
            run.attempts.append(_skipped(deployment))
            continue
        admitted_any = True
        served = await _try_deployment(run, deployment, permit)
        if served is not None:
            return served
    if not admitted_any and run.remaining() > 0:
        served = await _try_closest_to_ready(run, order)
        if served is not None:
            return served
    served = await _try_last_resort(run)
    if served is not None:
        return served
    raise _failure(run)


async def _try_deployment(run: _Run[T], deployment: LiveDeployment, permit: Permit) -> Served[T] | None:
    """Tries one deployment, and once more if the verdict allows a retry and the budget has it."""
    delays = run.pool.retry.delays()
    retried = False
    while True:
        outcome = await _attempt_once(run, deployment, permit)
        if isinstance(outcome, Served):
            return outcome
        verdict = outcome
        if verdict.retry is Retry.LAST_RESORT:
            wait = verdict.cooldown if verdict.cooldown is not None else next(delays)
            run.last_resort.append((run.clock() + wait, len(run.last_resort), deployment))
            return None
        if verdict.retry is not Retry.ONCE or retried:
            return None
        delay = retry_wait(verdict.cooldown, next(delays))
        if delay >= run.remaining():
            return None
        if not run.pool.budget.try_spend():
            run.pool.emit(events.BudgetExhausted(pool=run.pool.name, deployment=deployment.name))
            return None
        retried = True
        await anyio.sleep(delay)
        next_permit = await deployment.admit()
        if next_permit is None:  # the failure tripped the breaker: go elsewhere
            return None
        permit = next_permit


async def _try_closest_to_ready(run: _Run[T], order: tuple[LiveDeployment, ...]) -> Served[T] | None:
    """Every breaker kept us away: try the one closest to reopening rather than fail untried."""
    deployment = run.pool.closest_to_ready(list(order))
    if deployment is None:
        return None
    snapshot = deployment.breaker.snapshot()
    cooling = snapshot.cooldown_until is not None and snapshot.cooldown_until > run.clock()
    if cooling:  # it asked us to wait; honour that as a floor and come back if it fits
        assert snapshot.cooldown_until is not None
        run.last_resort.append((snapshot.cooldown_until, -1, deployment))
        return None
    permit = await deployment.admit(force=True)
    if permit is None:  # a probe is already in flight there; do not pile on
        return None
    logger.info("every deployment of pool %r is unavailable; probing %r, the closest to reopening", run.pool.name, deployment.name)
    outcome = await _attempt_once(run, deployment, permit)
    return outcome if isinstance(outcome, Served) else None


async def _try_last_resort(run: _Run[T]) -> Served[T] | None:
    """Nowhere else to go: wait for the earliest deployment that asked us to, if it fits."""
    for not_before, _, deployment in sorted(run.last_resort, key=lambda item: item[:2]):
        wait = max(0.0, not_before - run.clock())
        if wait >= run.remaining() or not run.pool.budget.try_spend():
            continue
        await anyio.sleep(wait)
        permit = await deployment.admit()
        if permit is None:
            continue
        outcome = await _attempt_once(run, deployment, permit)
        if isinstance(outcome, Served):
            return outcome
    return None


async def _attempt_once(run: _Run[T], deployment: LiveDeployment, permit: Permit) -> Served[T] | Verdict:
    started = run.clock()
    first_byte_at.set(None)
    sent = adapt_request(deployment.config, run.request)
    breaker = deployment.breaker
    pool = run.pool
    if run.last_failure is not None and run.last_failure[0] != deployment.name:
        left, kind = run.last_failure
        pool.emit(events.FailedOver(pool=pool.name, deployment=left, to_deployment=deployment.name, reason=kind.value))
    pool.emit(events.AttemptStarted(pool=pool.name, deployment=deployment.name, number=_tries(run) + 1))
    try:
        with anyio.CancelScope(deadline=min(started + deployment.timeouts.attempt, run.deadline)) as scope:
            value = await run.attempt(deployment, sent)
        if not scope.cancelled_caught:
            breaker.record_success(permit)
            elapsed = run.clock() - started
            run.attempts.append(Attempt(deployment.name, AttemptOutcome.SUCCESS, elapsed, adaptations=sent.adaptations))
            arrived = first_byte_at.get()
            first_byte = None if arrived is None else arrived - started
            succeeded = events.AttemptSucceeded(
                pool=pool.name, deployment=deployment.name, elapsed=elapsed, first_byte=first_byte
            )
            pool.emit(succeeded)
            return Served(value, deployment, sent, tuple(run.attempts))
        limit = "request deadline" if run.remaining() <= 0 else f"attempt timeout ({deployment.timeouts.attempt:g}s)"
        verdict = verdict_for(FailureKind.ATTEMPT_TIMEOUT, f"{limit} reached")
    except AttemptError as failed:
        verdict = failed.verdict
    except BaseException:
        # The caller cancelled (or a bug surfaced): never a failure of the deployment.
        breaker.release(permit)
        raise
    elapsed = run.clock() - started
    run.last_failure = (deployment.name, verdict.kind)
    run.attempts.append(
        Attempt(
            deployment.name,
            AttemptOutcome.FAILED,
            elapsed,
            error=verdict.detail,
            kind=verdict.kind,
            status_code=verdict.status_code,
            adaptations=sent.adaptations,
        )
    )
    logger.warning(
        "attempt on %r failed (%s): %s",
        deployment.name,
        verdict.kind.value,
        verdict.detail,
        extra=log_extra(
            pool.name, deployment.name, failure=verdict.kind.value, status_code=verdict.status_code, elapsed=elapsed
        ),
    )
    pool.emit(
        events.AttemptFailed(
            pool=pool.name,
            deployment=deployment.name,
            kind=verdict.kind,
            detail=verdict.detail,
            status_code=verdict.status_code,
            elapsed=elapsed,
        )
    )
    _settle(deployment, permit, verdict, pool)
    return verdict


def _tries(run: _Run[T]) -> int:
    return sum(1 for attempt in run.attempts if attempt.outcome is not AttemptOutcome.SKIPPED)


def _settle(deployment: LiveDeployment, permit: Permit, verdict: Verdict, pool: LivePool) -> None:
    breaker = deployment.breaker
    if verdict.cooldown is not None:
        breaker.cool_down(verdict.cooldown)
        pool.emit(events.CooldownSet(pool=pool.name, deployment=deployment.name, seconds=verdict.cooldown))
    match verdict.breaker:
        case BreakerEffect.FAILURE:
            breaker.record_failure(permit)
        case BreakerEffect.THROTTLE:
            breaker.record_throttle(permit)
        case BreakerEffect.FORCE_OPEN:
            breaker.release(permit)
            breaker.force_open(reason=verdict.kind.value)
            # A human has to fix this one (key, model id, quota): say so loudly.
            logger.error(
                "deployment %r of pool %r is misconfigured and taken out of rotation for %gs: %s",
                deployment.name,
                pool.name,
                breaker.policy.force_open_seconds,
                verdict.detail,
                extra=log_extra(
                    pool.name,
                    deployment.name,
                    failure=verdict.kind.value,
                    status_code=verdict.status_code,
                    breaker_state="open",
                ),
            )
        case BreakerEffect.NONE:
            breaker.release(permit)


def _skipped(deployment: LiveDeployment) -> Attempt:
    ready_in = deployment.breaker.ready_in()
    state = deployment.breaker.state.value
    return Attempt(
        deployment.name,
        AttemptOutcome.SKIPPED,
        0.0,
        error=f"breaker {state}; ready in {ready_in:.2f}s" if ready_in > 0 else f"breaker {state}; no probe slot free",
    )


def _failure(run: _Run[T]) -> AllDeploymentsFailedError:
    story = describe_attempts(run.attempts)
    if run.remaining() <= 0:
        return DeadlineExceededError(
            f"deadline reached before any deployment of {run.request.model!r} delivered audio: {story}",
            model=run.request.model,
            attempts=run.attempts,
        )
    return AllDeploymentsFailedError(
        f"every deployment of {run.request.model!r} failed: {story}", model=run.request.model, attempts=run.attempts
    )
