"""What every event and log record carries about the request in hand: its id, and the
structured extras of a ``resilient_tts`` log record. Both `_events` and `_logging` read it,
so neither needs the other."""

from __future__ import annotations

import itertools
import logging
from contextvars import ContextVar
from typing import Any

__all__ = ["current_request", "current_request_id", "log_extra", "logger", "next_request_id"]

logger = logging.getLogger("resilient_tts")

# The request being served in this task (and the tasks it starts), so that every event built
# on its behalf carries its id without the code that emits it having to pass it along.
current_request: ContextVar[int | None] = ContextVar("resilient_tts_request", default=None)
_request_ids = itertools.count(1)


def current_request_id() -> int | None:
    """The id of the request this task is serving, or None outside a request."""
    return current_request.get()


def next_request_id() -> int:
    return next(_request_ids)


def log_extra(
    pool: str | None,
    deployment: str | None,
    *,
    failure: str | None = None,
    status_code: int | None = None,
    breaker_state: str | None = None,
    elapsed: float | None = None,
) -> dict[str, Any]:
    """The structured extras every ``resilient_tts`` log record carries, all keys always present."""
    return {
        "pool": pool or None,
        "deployment": deployment or None,
        "failure": failure,
        "status_code": status_code,
        "breaker_state": breaker_state,
        "elapsed": elapsed,
        "request_id": current_request_id(),
    }
