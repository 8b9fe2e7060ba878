"""Log lines for what happens inside a request, on the standard ``resilient_tts`` logger.

Every record carries the same structured extras, so a JSON formatter or a log pipeline can
filter on them without parsing messages: ``pool``, ``deployment``, ``failure``,
``status_code``, ``breaker_state``, ``elapsed`` and ``request_id`` (None where they do not
apply). Levels:

- DEBUG: a request or attempt started or succeeded, a hedge lost its race;
- INFO: a failover, a ``Retry-After`` cool-down, a breaker half-open or closed again, a hedge
  started, a long text's segment served elsewhere, a request that failed as a whole;
- WARNING: an attempt failed, a breaker opened, the retry budget ran dry;
- ERROR: a deployment is misconfigured (401, 403, 404, quota, unknown model) and taken out
  of rotation until a human fixes it.

::

    logging.getLogger("resilient_tts").setLevel(logging.INFO)

Messages name pools, deployments, failure kinds and timings; never an API key, never the
input text, never audio.
"""

from __future__ import annotations

import logging
from typing import Any

from .._core._breaker import BreakerState
from ._context import log_extra, logger
from ._events import (
    AttemptStarted,
    AttemptSucceeded,
    BudgetExhausted,
    CooldownSet,
    Event,
    FailedOver,
    HedgeCancelled,
    HedgeStarted,
    RequestFinished,
    RequestStarted,
    SegmentSwitched,
)

__all__ = ["breaker_log_level", "log_event", "log_extra", "logger"]


def log_event(event: Event) -> None:
    """Logs the events that the failover loop and the breakers do not log themselves.

    Attempt failures, breaker transitions and force-opens are logged where they happen
    (`_failover.py`, `_pool.py`), with the same extras.
    """
    match event:
        case RequestStarted() if logger.isEnabledFor(logging.DEBUG):
            _log(
                logging.DEBUG,
                event,
                "request for %r started (%d characters)",
                event.pool,
                event.input_chars,
            )
        case RequestFinished(cancelled=True):
            _log(
                logging.DEBUG,
                event,
                "request for %r cancelled after %.3fs",
                event.pool,
                event.elapsed,
                elapsed=event.elapsed,
            )
        case RequestFinished(error=None):
            _log(
                logging.DEBUG,
                event,
                "request for %r served by %r in %.3fs (%d attempt(s))",
                event.pool,
                event.deployment,
                event.elapsed,
                event.attempts,
                elapsed=event.elapsed,
            )
        case RequestFinished():
            _log(
                logging.INFO,
                event,
                "request for %r failed after %.3fs and %d attempt(s): %s",
                event.pool,
                event.elapsed,
                event.attempts,
                event.error,
                elapsed=event.elapsed,
            )
        case AttemptStarted() if logger.isEnabledFor(logging.DEBUG):
            _log(logging.DEBUG, event, "attempt %d on %r", event.number, event.deployment)
        case AttemptSucceeded():
            first_byte = (
                "" if event.first_byte is None else f", first byte after {event.first_byte:.3f}s"
            )
            _log(
                logging.DEBUG,
                event,
                "attempt on %r succeeded in %.3fs%s",
                event.deployment,
                event.elapsed,
                first_byte,
                elapsed=event.elapsed,
            )
        case FailedOver():
            _log(
                logging.INFO,
                event,
                "failing over from %r to %r (%s)",
                event.from_deployment,
                event.to_deployment,
                event.reason,
                failure=event.reason,
            )
        case CooldownSet():
            _log(
                logging.INFO,
                event,
                "deployment %r asked us to wait %.3gs (Retry-After); cooling down",
                event.deployment,
                event.seconds,
            )
        case BudgetExhausted():
            _log(
                logging.WARNING,
                event,
                "retry budget of pool %r is spent; not retrying %r",
                event.pool,
                event.deployment,
            )
        case HedgeStarted():
            _log(
                logging.INFO,
                event,
                "no first byte from the preferred deployment after %.3gs; hedging on %r",
                event.after,
                event.deployment,
            )
        case HedgeCancelled():
            _log(
                logging.DEBUG,
                event,
                "hedged attempt on %r lost the race; cancelled",
                event.deployment,
            )
        case SegmentSwitched():
            _log(
                logging.INFO,
                event,
                "segment %d served by %r instead of %r",
                event.segment,
                event.deployment,
                event.previous,
            )


def breaker_log_level(new: BreakerState) -> int:
    """Opening is news an operator wants; half-open and closed are the way back."""
    return logging.WARNING if new is BreakerState.OPEN else logging.INFO


def _log(level: int, event: Event, message: str, *args: object, **extra: Any) -> None:
    if logger.isEnabledFor(level):
        fields = log_extra(event.pool, event.deployment, **extra)
        fields["request_id"] = event.request_id
        logger.log(level, message, *args, extra=fields)
