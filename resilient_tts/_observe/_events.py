"""What happens inside a request, as frozen event objects handed to hooks.

A hook is any callable taking one event; it is called synchronously, in order, on the event
loop, so it must be quick (hand slow work to a queue). A hook that raises is logged and
ignored: observability never fails a request. Events carry names, kinds and timings, never
an API key and never audio. Every event has a `request_id`; `RequestStarted` and
`RequestFinished` bracket each request.

    def on_event(event: resilient_tts.Event) -> None:
        if isinstance(event, resilient_tts.FailedOver):
            print(f"{event.from_deployment} -> {event.to_deployment}: {event.reason}")

    SpeechClient(hooks=[on_event])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextvars import Token
from dataclasses import dataclass, field
from types import TracebackType

import anyio

from .._core._breaker import BreakerState
from .._core._classify import FailureKind
from .._core._records import Attempt, AttemptOutcome
from ._context import current_request, current_request_id, log_extra, logger, next_request_id

__all__ = [
    "AttemptFailed",
    "AttemptStarted",
    "AttemptSucceeded",
    "BreakerTransitioned",
    "BudgetExhausted",
    "CooldownSet",
    "Event",
    "EventHook",
    "FailedOver",
    "HedgeCancelled",
    "HedgeStarted",
    "RequestFinished",
    "RequestScope",
    "RequestStarted",
    "SegmentSwitched",
    "current_request_id",
    "emit",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of every event: the logical model (pool) and the deployment it concerns.

    `request_id` tells apart the events of concurrent requests (None for a breaker change
    noticed outside any request, e.g. by `SpeechClient.health()`).
    """

    pool: str
    deployment: str
    request_id: int | None = field(default_factory=current_request_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestStarted(Event):
    """A request for the logical model `pool` began; `deployment` is "" (none chosen yet)."""

    deployment: str = ""
    input_chars: int
    streaming: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestFinished(Event):
    """A request ended. `deployment` served it ("" if none did); `error` names the exception
    class it ended with (None on success); `attempts` counts the tries actually sent."""

    deployment: str = ""
    elapsed: float
    attempts: int
    error: str | None = None
    cancelled: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and not self.cancelled


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptStarted(Event):
    """An attempt is being sent to `deployment`; `number` counts the request's attempts."""

    number: int  # 1 for the request's first attempt


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptSucceeded(Event):
    """`deployment` delivered audio; `first_byte` is None if it could not be measured."""

    elapsed: float
    first_byte: float | None = None  # seconds from sending to the first body byte


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptFailed(Event):
    """The attempt on `deployment` failed: `kind` says how (SPEC §4), `detail` in words."""

    kind: FailureKind
    detail: str
    status_code: int | None
    elapsed: float


@dataclass(frozen=True, slots=True, kw_only=True)
class FailedOver(Event):
    """The request moves on: `deployment` is the one it leaves."""

    to_deployment: str
    reason: str

    @property
    def from_deployment(self) -> str:
        return self.deployment


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerTransitioned(Event):
    """The circuit breaker of `deployment` changed state; `open_until` is on the loop's clock."""

    old: BreakerState
    new: BreakerState
    reason: str
    open_until: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class CooldownSet(Event):
    """`deployment` asked us to stay away for `seconds` (``Retry-After``); not a failure."""

    seconds: float  # from Retry-After / retry-after-ms


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetExhausted(Event):
    """A retry was worth making but the pool's retry budget had no token left."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HedgeStarted(Event):
    """A hedged attempt started on `deployment` because the one before was slow."""

    after: float  # seconds without a first byte from the deployment hedged against


@dataclass(frozen=True, slots=True, kw_only=True)
class HedgeCancelled(Event):
    """The hedge (or the original) lost the race and was cancelled; not a failure."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmentSwitched(Event):
    """A long text's segment was served by another deployment than the previous segment."""

    previous: str
    segment: int


EventHook = Callable[[Event], None]


def emit(hooks: Sequence[EventHook], event: Event) -> None:
    for hook in hooks:
        try:
            hook(event)
        except Exception:
            extra = log_extra(event.pool, event.deployment)
            logger.exception("event hook %r raised; ignored", hook, extra=extra)


class RequestScope:
    """Brackets one request with `RequestStarted` and `RequestFinished`, and gives every event
    emitted inside it (in this task and the tasks it starts) the request's `request_id`.

    ::

        with RequestScope(hooks, pool=request.model, input_chars=len(request.input)) as scope:
            served = await run_with_failover(...)
            scope.served(served.deployment.name, served.attempts)

    A streaming response enters the scope when the request is sent and leaves it when the
    stream is closed. Leaving with an exception reports its class name (and the attempts an
    `AllDeploymentsFailedError` carries); a cancellation is reported as cancelled.
    """

    def __init__(
        self,
        hooks: Sequence[EventHook],
        *,
        pool: str,
        input_chars: int,
        streaming: bool = False,
        clock: Callable[[], float] = anyio.current_time,
    ) -> None:
        self.request_id = next_request_id()
        self._hooks = hooks
        self._pool = pool
        self._input_chars = input_chars
        self._streaming = streaming
        self._clock = clock
        self._started = 0.0
        self._token: Token[int | None] | None = None
        self._deployment = ""
        self._attempts: Sequence[Attempt] = ()

    def __enter__(self) -> RequestScope:
        self._token = current_request.set(self.request_id)
        self._started = self._clock()
        started = RequestStarted(
            pool=self._pool, input_chars=self._input_chars, streaming=self._streaming
        )
        emit(self._hooks, started)
        return self

    def served(self, deployment: str, attempts: Sequence[Attempt]) -> None:
        """Records who served the request and the attempts it took, before the scope ends."""
        self._deployment = deployment
        self._attempts = attempts

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        cancelled = exc is not None and isinstance(exc, anyio.get_cancelled_exc_class())
        attempts = self._attempts if exc is None else getattr(exc, "attempts", self._attempts)
        tried = sum(1 for attempt in attempts if attempt.outcome is not AttemptOutcome.SKIPPED)
        finished = RequestFinished(
            pool=self._pool,
            deployment=self._deployment if exc is None else "",
            elapsed=self._clock() - self._started,
            attempts=tried,
            error=None if exc is None or cancelled else type(exc).__name__,
            cancelled=cancelled,
            request_id=self.request_id,
        )
        emit(self._hooks, finished)
        if self._token is not None:
            try:
                current_request.reset(self._token)
            except ValueError:  # left in another task than it was entered in (a stream)
                current_request.set(None)
