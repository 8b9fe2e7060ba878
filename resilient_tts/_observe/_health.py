"""A health snapshot: each pool's deployments, their breakers and their recent behaviour.

::

    health = client.health()
    for pool in health.pools:
        for d in pool.deployments:
            print(pool.name, d.name, d.state, d.failure_rate, d.first_byte_p95, d.last_error)
    json.dumps(health.to_dict())           # for a /health endpoint

Everything in it is frozen and secret-free: names, states, counts, timings, failure kinds.
Times are wall-clock UTC datetimes; `ready_in` is seconds from the snapshot.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Protocol

from .._core._breaker import BreakerState, CircuitBreaker
from .._core._classify import FailureKind
from ._events import AttemptFailed, AttemptSucceeded, Event

__all__ = ["ClientHealth", "DeploymentHealth", "HealthLog", "PoolHealth", "take_snapshot"]

# First-byte latencies kept per deployment for the percentiles: recent enough to follow a
# server that slows down, many enough for a p99 that means something.
LATENCY_WINDOW = 200


@dataclass(frozen=True, slots=True)
class DeploymentHealth:
    """One deployment of one pool, at the instant of the snapshot.

    `state` is its circuit breaker's; `available` says whether a request would be sent to it
    now (not open, not cooling down after a ``Retry-After``). `failure_rate` and
    `calls_in_window` cover the breaker's sliding window (30 s by default) since it last
    closed. The first-byte percentiles (seconds, None before any success) cover its last
    200 successful attempts.
    """

    pool: str
    name: str
    state: BreakerState
    available: bool
    ready_in: float
    open_until: datetime | None
    cooldown_until: datetime | None
    failure_rate: float
    calls_in_window: int
    consecutive_failures: int
    trips: int
    throttles_in_window: int
    first_byte_p50: float | None
    first_byte_p95: float | None
    first_byte_p99: float | None
    first_byte_samples: int
    last_error: FailureKind | None
    last_error_detail: str | None
    last_error_status: int | None
    last_error_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: enums as their values, datetimes as ISO 8601 strings."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class PoolHealth:
    """A logical model's deployments in their configured order, first preferred."""

    name: str
    deployments: tuple[DeploymentHealth, ...]

    @property
    def available(self) -> tuple[str, ...]:
        """Names of the deployments a request would be sent to now; empty if none."""
        return tuple(d.name for d in self.deployments if d.available)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "available": list(self.available),
            "deployments": [d.to_dict() for d in self.deployments],
        }


@dataclass(frozen=True, slots=True)
class ClientHealth:
    """Every pool of a `SpeechClient`, from `SpeechClient.health()`."""

    pools: tuple[PoolHealth, ...]
    taken_at: datetime

    def pool(self, name: str) -> PoolHealth:
        """The pool (logical model) named `name`; KeyError if there is none."""
        for pool in self.pools:
            if pool.name == name:
                return pool
        raise KeyError(name)

    def deployments(self, name: str) -> tuple[DeploymentHealth, ...]:
        """The deployment named `name` in every pool that contains it (one per pool)."""
        return tuple(d for pool in self.pools for d in pool.deployments if d.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "taken_at": self.taken_at.isoformat(),
            "pools": [pool.to_dict() for pool in self.pools],
        }


@dataclass(frozen=True, slots=True)
class _LastError:
    kind: FailureKind
    detail: str
    status_code: int | None
    at: float  # wall clock


class HealthLog:
    """A hook the client always installs: remembers, per deployment of each pool, its recent
    first-byte latencies and its last error. Bounded memory; quick, as a hook must be."""

    def __init__(self, window: int = LATENCY_WINDOW) -> None:
        self._window = window
        self._first_bytes: dict[tuple[str, str], deque[float]] = {}
        self._last_errors: dict[tuple[str, str], _LastError] = {}

    def __call__(self, event: Event) -> None:
        if isinstance(event, AttemptSucceeded) and event.first_byte is not None:
            key = (event.pool, event.deployment)
            samples = self._first_bytes.get(key)
            if samples is None:
                samples = self._first_bytes[key] = deque(maxlen=self._window)
            samples.append(event.first_byte)
        elif isinstance(event, AttemptFailed):
            self._last_errors[(event.pool, event.deployment)] = _LastError(
                event.kind, event.detail, event.status_code, time.time()
            )

    def first_bytes(self, pool: str, deployment: str) -> Sequence[float]:
        return tuple(self._first_bytes.get((pool, deployment), ()))

    def last_error(self, pool: str, deployment: str) -> _LastError | None:
        return self._last_errors.get((pool, deployment))


class ObservedDeployment(Protocol):
    """What a health snapshot reads of a deployment (the engine's `LiveDeployment`)."""

    @property
    def name(self) -> str: ...
    @property
    def breaker(self) -> CircuitBreaker: ...


class ObservedPool(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def deployments(self) -> Sequence[ObservedDeployment]: ...


def take_snapshot(pools: Mapping[str, ObservedPool], log: HealthLog, *, now: float) -> ClientHealth:
    """The health of every pool; `now` is the breakers' clock (``anyio.current_time()``)."""
    wall = time.time()
    return ClientHealth(
        pools=tuple(
            PoolHealth(
                name,
                tuple(_deployment_health(pool.name, d, log, now, wall) for d in pool.deployments),
            )
            for name, pool in pools.items()
        ),
        taken_at=datetime.fromtimestamp(wall, UTC),
    )


def _deployment_health(
    pool: str, deployment: ObservedDeployment, log: HealthLog, now: float, wall: float
) -> DeploymentHealth:
    snapshot = deployment.breaker.snapshot()
    ready_in = deployment.breaker.ready_in()
    latencies = sorted(log.first_bytes(pool, deployment.name))
    error = log.last_error(pool, deployment.name)
    return DeploymentHealth(
        pool=pool,
        name=deployment.name,
        state=snapshot.state,
        available=snapshot.state is not BreakerState.OPEN and ready_in == 0.0,
        ready_in=ready_in,
        open_until=_wall_time(snapshot.open_until, now, wall),
        cooldown_until=_wall_time(snapshot.cooldown_until, now, wall),
        failure_rate=snapshot.failure_rate,
        calls_in_window=snapshot.calls_in_window,
        consecutive_failures=snapshot.consecutive_failures,
        trips=snapshot.trips,
        throttles_in_window=snapshot.throttles_in_window,
        first_byte_p50=percentile(latencies, 50),
        first_byte_p95=percentile(latencies, 95),
        first_byte_p99=percentile(latencies, 99),
        first_byte_samples=len(latencies),
        last_error=error.kind if error else None,
        last_error_detail=error.detail if error else None,
        last_error_status=error.status_code if error else None,
        last_error_at=datetime.fromtimestamp(error.at, UTC) if error else None,
    )


def percentile(ordered: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of sorted `ordered`: a value that was really observed."""
    if not ordered:
        return None
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _wall_time(clock_time: float | None, now: float, wall: float) -> datetime | None:
    """A time on the breakers' monotonic clock as a wall-clock datetime."""
    if clock_time is None:
        return None
    return datetime.fromtimestamp(wall + (clock_time - now), UTC)


def _plain(value: object) -> object:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    return value
