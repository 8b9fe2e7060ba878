"""What happens inside a request, as frozen event objects handed to hooks.

A hook is any callable taking one event; it is called synchronously, in order, on the event
loop, so it must be quick (hand slow work to a queue). A hook that raises is logged and
ignored: observability never fails a request. Events carry names, kinds and timings, never
an API key and never audio.

    def on_event(event: resilient_tts.Event) -> None:
        if isinstance(event, resilient_tts.FailedOver):
            print(f"{event.from_deployment} -> {event.to_deployment}: {event.reason}")

    SpeechClient(hooks=[on_event])
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ._breaker import BreakerState
from ._classify import FailureKind

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
    "SegmentSwitched",
    "emit",
]

logger = logging.getLogger("resilient_tts")


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of every event: the logical model (pool) and the deployment it concerns."""

    pool: str
    deployment: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptStarted(Event):
    number: int  # 1 for the request's first attempt


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptSucceeded(Event):
    elapsed: float
    first_byte: float | None = None  # seconds from sending to the first body byte


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptFailed(Event):
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
    old: BreakerState
    new: BreakerState
    reason: str
    open_until: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class CooldownSet(Event):
    seconds: float  # from Retry-After / retry-after-ms


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetExhausted(Event):
    """A retry was worth making but the pool's retry budget had no token left."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HedgeStarted(Event):
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
            logger.exception("event hook %r raised; ignored", hook)
