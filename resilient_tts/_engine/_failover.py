"""The one retry and failover loop, under one deadline.

A request walks its pool in order. Each failure's `Verdict` decides the rest: one more try on
the same deployment (budget allowing, after a jittered backoff), on to the next deployment, or
a deployment kept as a last resort because it asked us to wait (``Retry-After``) or throttled
us. When every breaker keeps us away, the deployment closest to reopening is tried anyway.
Nothing ever sleeps past the deadline; a wait hint that does not fit is not waited for.

With a pool's `hedge_delay` set, a deployment that has not sent its first byte after that
long gets company: the next deployment is started too (if the retry budget has a token), the
first to answer wins and the other is cancelled, which is not a failure (`_hedge.race`).

With ``hold=True`` (streaming) an attempt that returns has only received its first byte: its
breaker permit stays taken, and the caller settles it through `Served.held` when the body ends.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Generic, Protocol, TypeVar, runtime_checkable

import anyio

from .._config._request import SpeechRequest
from .._core._breaker import Permit
from .._core._classify import BreakerEffect, FailureKind, Retry, Verdict, verdict_for
from .._core._records import Attempt, AttemptOutcome, describe_attempts
from .._core._retry import retry_wait
from .._exceptions import AllDeploymentsFailedError, DeadlineExceededError
from .._observe import _events as events
from .._observe._logging import log_extra
from ._attempt import AttemptError, DeploymentRequest, adapt_request, first_byte_at
from ._hedge import Contestant, race
from ._pool import LiveDeployment, LivePool

__all__ = ["AttemptFunction", "HeldAttempt", "Served", "run_with_failover"]

logger = logging.getLogger("resilient_tts")

T = TypeVar("T")
AttemptFunction = Callable[[LiveDeployment, DeploymentRequest], Awaitable[T]]


@dataclass(frozen=True, slots=True)
class Served(Generic[T]):
    value: T
    deployment: LiveDeployment
    sent: DeploymentRequest
    # Every attempt so far; with hold=True, all but the one that served (see `held`).
    attempts: tuple[Attempt, ...]
    held: HeldAttempt | None = None


@runtime_checkable
class _Closable(Protocol):
    async def aclose(self) -> None: ...


class HeldAttempt:
    """An attempt that has received its first byte while its body is still to be read.

    Its breaker permit stays taken until the body ends. Settle it exactly once:
    `succeeded()` when the body ended whole, `failed(verdict)` when it stalled or was cut,
    `released()` when the caller stopped reading (never the deployment's fault). Each returns
    the attempt's `Attempt` record; calls after the first return the same record.
    """

    def __init__(
        self,
        pool: LivePool,
        deployment: LiveDeployment,
        permit: Permit,
        sent: DeploymentRequest,
        *,
        started: float,
        first_byte: float | None,
        clock: Callable[[], float],
    ) -> None:
        self.deployment = deployment
        self._pool = pool
        self._permit = permit
        self._sent = sent
        self._started = started
        self._first_byte = first_byte
        self._clock = clock
        self._record: Attempt | None = None

    def succeeded(self) -> Attempt:
        if self._record is None:
            self.deployment.breaker.record_success(self._permit)
            elapsed = self._clock() - self._started
            self._record = Attempt(
                self.deployment.name,
                AttemptOutcome.SUCCESS,
                elapsed,
                adaptations=self._sent.adaptations,
            )
            self._pool.emit(
                events.AttemptSucceeded(
                    pool=self._pool.name,
                    deployment=self.deployment.name,
                    elapsed=elapsed,
                    first_byte=self._first_byte,
                )
            )
        return self._record

    def failed(self, verdict: Verdict) -> Attempt:
        if self._record is None:
            elapsed = self._clock() - self._started
            self._record = _record_failure(
                self._pool, self.deployment, self._permit, self._sent, verdict, elapsed
            )
        return self._record

    def released(self) -> Attempt:
        if self._record is None:
            self.deployment.breaker.release(self._permit)
            elapsed = self._clock() - self._started
            self._record = Attempt(
                self.deployment.name,
                AttemptOutcome.CANCELLED,
                elapsed,
                error="the caller stopped reading",
                adaptations=self._sent.adaptations,
            )
        return self._record


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
    hold: bool = False

    def remaining(self) -> float:
        return self.deadline - self.clock()


async def run_with_failover(
    pool: LivePool,
    request: SpeechRequest,
    attempt: AttemptFunction[T],
    *,
    clock: Callable[[], float],
    candidates: tuple[LiveDeployment, ...] | None = None,
    hold: bool = False,
    deadline: float | None = None,
    deposit: bool = True,
) -> Served[T]:
    """Runs `attempt` on the pool's deployments until one succeeds; raises the story otherwise.

    `candidates` replaces the pool's order (a long text's next segment puts the deployment
    that spoke the previous one first). `hold`: see the module docstring. `deadline` is the
    request's absolute deadline on `clock` (a long text's segments share one); by default
    the request's own timeout from now. `deposit`: whether this run is a new request for the
    retry budget (a long text deposits once, for its first segment).
    """
    if deadline is None:
        deadline = clock() + (request.timeout if request.timeout is not None else pool.deadline)
    run = _Run(pool, request, attempt, clock, deadline, hold=hold)
    order = candidates if candidates is not None else pool.deployments
    if deposit:
        pool.budget.deposit()
    admitted_any = False
    pending = deque(order)  # a hedge takes its deployment from here too
    while pending:
        deployment = pending.popleft()
        if run.remaining() <= 0:
            break
        permit = await deployment.admit()
        if permit is None:
            run.attempts.append(_skipped(deployment))
            continue
        admitted_any = True
        if pool.hedge_delay is not None and pending:
            served = await _try_hedged(run, deployment, permit, pending, pool.hedge_delay)
        else:
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


async def _try_deployment(
    run: _Run[T], deployment: LiveDeployment, permit: Permit
) -> Served[T] | None:
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


async def _try_hedged(
    run: _Run[T],
    deployment: LiveDeployment,
    permit: Permit,
    pending: deque[LiveDeployment],
    delay: float,
) -> Served[T] | None:
    """`_try_deployment`, with the next deployments of `pending` started alongside whenever
    `delay` passes without a first byte. Losers go back to the front of `pending`: they
    were cancelled, not failed, and may serve if the winner's body fails after all."""
    pool = run.pool

    def contestant(
        candidate: LiveDeployment, candidate_permit: Permit
    ) -> Contestant[LiveDeployment, Served[T]]:
        return Contestant(candidate, lambda: _try_deployment(run, candidate, candidate_permit))

    async def hedge() -> Contestant[LiveDeployment, Served[T]] | None:
        while pending and run.remaining() > 0:
            candidate = pending.popleft()
            candidate_permit = await candidate.admit()
            if candidate_permit is None:
                run.attempts.append(_skipped(candidate))
                continue
            if not pool.budget.try_spend():  # hedges draw on the retry budget
                candidate.breaker.release(candidate_permit)
                pending.appendleft(candidate)
                pool.emit(events.BudgetExhausted(pool=pool.name, deployment=candidate.name))
                return None
            pool.emit(events.HedgeStarted(pool=pool.name, deployment=candidate.name, after=delay))
            return contestant(candidate, candidate_permit)
        return None

    def cancelled(loser: LiveDeployment, elapsed: float) -> None:
        run.attempts.append(
            Attempt(loser.name, AttemptOutcome.CANCELLED, elapsed, error="lost a hedged race")
        )
        pool.emit(events.HedgeCancelled(pool=pool.name, deployment=loser.name))

    first = contestant(deployment, permit)
    outcome = await race(first, hedge, delay=delay, on_cancel=cancelled, clock=run.clock)
    for loser, _ in reversed(outcome.cancelled):
        pending.appendleft(loser)
    for late in outcome.surplus:  # answered too, a moment after the winner
        if late.held is not None:
            late.held.released()
        if isinstance(late.value, _Closable):
            await late.value.aclose()
    if outcome.result is None:
        return None
    return replace(outcome.result, attempts=tuple(run.attempts))  # the cancelled ones too


async def _try_closest_to_ready(
    run: _Run[T], order: tuple[LiveDeployment, ...]
) -> Served[T] | None:
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
    logger.info(
        "every deployment of pool %r is unavailable; probing %r, the closest to reopening",
        run.pool.name,
        deployment.name,
    )
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


async def _attempt_once(
    run: _Run[T], deployment: LiveDeployment, permit: Permit
) -> Served[T] | Verdict:
    started = run.clock()
    first_byte_at.set(None)
    sent = adapt_request(deployment.config, run.request)
    breaker = deployment.breaker
    pool = run.pool
    if run.last_failure is not None and run.last_failure[0] != deployment.name:
        left, kind = run.last_failure
        pool.emit(
            events.FailedOver(
                pool=pool.name, deployment=left, to_deployment=deployment.name, reason=kind.value
            )
        )
    pool.emit(
        events.AttemptStarted(pool=pool.name, deployment=deployment.name, number=_tries(run) + 1)
    )
    try:
        with anyio.CancelScope(
            deadline=min(started + deployment.timeouts.attempt, run.deadline)
        ) as scope:
            value = await run.attempt(deployment, sent)
        if not scope.cancelled_caught and run.hold:
            arrived = first_byte_at.get()
            held = HeldAttempt(
                pool,
                deployment,
                permit,
                sent,
                started=started,
                first_byte=None if arrived is None else arrived - started,
                clock=run.clock,
            )
            return Served(value, deployment, sent, tuple(run.attempts), held)
        if not scope.cancelled_caught:
            breaker.record_success(permit)
            elapsed = run.clock() - started
            run.attempts.append(
                Attempt(
                    deployment.name, AttemptOutcome.SUCCESS, elapsed, adaptations=sent.adaptations
                )
            )
            arrived = first_byte_at.get()
            first_byte = None if arrived is None else arrived - started
            succeeded = events.AttemptSucceeded(
                pool=pool.name, deployment=deployment.name, elapsed=elapsed, first_byte=first_byte
            )
            pool.emit(succeeded)
            return Served(value, deployment, sent, tuple(run.attempts))
        limit = (
            "request deadline"
            if run.remaining() <= 0
            else f"attempt timeout ({deployment.timeouts.attempt:g}s)"
        )
        verdict = verdict_for(FailureKind.ATTEMPT_TIMEOUT, f"{limit} reached")
    except AttemptError as failed:
        verdict = failed.verdict
    except BaseException:
        # The caller cancelled (or a bug surfaced): never a failure of the deployment.
        breaker.release(permit)
        raise
    elapsed = run.clock() - started
    run.last_failure = (deployment.name, verdict.kind)
    run.attempts.append(_record_failure(pool, deployment, permit, sent, verdict, elapsed))
    return verdict


def _record_failure(
    pool: LivePool,
    deployment: LiveDeployment,
    permit: Permit,
    sent: DeploymentRequest,
    verdict: Verdict,
    elapsed: float,
) -> Attempt:
    """Logs and reports a failed attempt, settles its permit; the `Attempt` to record."""
    logger.warning(
        "attempt on %r failed (%s): %s",
        deployment.name,
        verdict.kind.value,
        verdict.detail,
        extra=log_extra(
            pool.name,
            deployment.name,
            failure=verdict.kind.value,
            status_code=verdict.status_code,
            elapsed=elapsed,
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
    return Attempt(
        deployment.name,
        AttemptOutcome.FAILED,
        elapsed,
        error=verdict.detail,
        kind=verdict.kind,
        status_code=verdict.status_code,
        adaptations=sent.adaptations,
    )


def _tries(run: _Run[T]) -> int:
    return sum(1 for attempt in run.attempts if attempt.outcome is not AttemptOutcome.SKIPPED)


def _settle(deployment: LiveDeployment, permit: Permit, verdict: Verdict, pool: LivePool) -> None:
    breaker = deployment.breaker
    if verdict.cooldown is not None:
        breaker.cool_down(verdict.cooldown)
        pool.emit(
            events.CooldownSet(pool=pool.name, deployment=deployment.name, seconds=verdict.cooldown)
        )
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
        error=f"breaker {state}; ready in {ready_in:.2f}s"
        if ready_in > 0
        else f"breaker {state}; no probe slot free",
    )


def _failure(run: _Run[T]) -> AllDeploymentsFailedError:
    story = describe_attempts(run.attempts)
    if run.remaining() <= 0:
        return DeadlineExceededError(
            f"deadline reached before any deployment of {run.request.model!r} delivered audio: "
            f"{story}",
            model=run.request.model,
            attempts=run.attempts,
        )
    return AllDeploymentsFailedError(
        f"every deployment of {run.request.model!r} failed: {story}",
        model=run.request.model,
        attempts=run.attempts,
    )
