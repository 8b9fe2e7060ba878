"""What a fleet-state store is: its keys, the records it returns, and the protocol its
implementations (`_redis_state.RedisStore`) follow. `SharedState` and the stores both use it,
so neither imports the other."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

__all__ = ["NOTHING_SHARED", "ProbeAnswer", "SharedRecord", "SharedStore", "StoreKey"]

# Whether a fleet-wide probe permit was granted: "taken" (all in use), "closed" (a probe
# elsewhere succeeded), "open" (a probe elsewhere failed: open again for a while).
ProbeAnswer = Literal["granted", "taken", "closed", "open"]


@dataclass(frozen=True, slots=True)
class StoreKey:
    """Where one deployment's shared state lives in the store, and how long a streak lasts."""

    pool: str
    deployment: str
    streak_window: float  # a fleet-wide failure streak older than this starts again


@dataclass(frozen=True, slots=True)
class SharedRecord:
    """One deployment's shared state as the store returned it.

    Durations are seconds from when the store answered (``received_at``, `time.monotonic`):
    use `open_left` and `cooldown_left`, which age them.
    """

    event: str | None  # id of the last change of state, None if there never was one
    state: Literal["open", "closed"]
    open_remaining: float  # 0 while closed, or open but elapsed (half-open fleet-wide)
    cooldown_remaining: float
    reason: str
    trips: int  # consecutive trips across the fleet; grows the open time
    streak: int  # consecutive failures across the fleet while closed
    probes: int  # probe permits held across the fleet
    received_at: float = field(default_factory=time.monotonic)

    def open_left(self) -> float:
        return max(0.0, self.open_remaining - (time.monotonic() - self.received_at))

    def cooldown_left(self) -> float:
        return max(0.0, self.cooldown_remaining - (time.monotonic() - self.received_at))


NOTHING_SHARED = SharedRecord(None, "closed", 0.0, 0.0, "", 0, 0, 0, received_at=0.0)


class SharedStore(Protocol):
    """Atomic operations on shared breaker state. Called on one worker thread, one at a time;
    any exception means "unavailable". `_redis_state.RedisStore` is the implementation."""

    def read(self, keys: Sequence[StoreKey]) -> list[SharedRecord]:
        """The records of ``keys``, in order, in one round trip."""
        ...

    def publish_open(
        self, key: StoreKey, seconds: float, reason: str, event: str, *, trip: bool
    ) -> SharedRecord:
        """Open for ``seconds`` unless a longer open time runs; ``trip`` counts a new trip."""
        ...

    def publish_closed(self, key: StoreKey, reason: str, event: str) -> SharedRecord:
        """Closed again (a probe succeeded): clears the open time, trips, streak and probes."""
        ...

    def publish_cooldown(self, key: StoreKey, seconds: float) -> SharedRecord:
        """Cool down for ``seconds``; never shortens a longer cool-down."""
        ...

    def record_failure(self, key: StoreKey) -> SharedRecord:
        """One more failure in the fleet-wide streak (ignored while open)."""
        ...

    def record_success(self, key: StoreKey) -> SharedRecord:
        """A success: the fleet-wide streak starts again."""
        ...

    def acquire_probe(
        self,
        key: StoreKey,
        token: str,
        limit: int,
        ttl: float,
        known_event: str | None,
        *,
        forced: bool,
    ) -> tuple[ProbeAnswer, float]:
        """Take one of ``limit`` fleet-wide probe permits for ``ttl`` seconds, if one is free.

        Refused as "closed" when a probe elsewhere closed the breaker after ``known_event``,
        and (unless ``forced``) as "open", with the seconds left, when one re-opened it.
        """
        ...

    def release_probe(self, key: StoreKey, token: str) -> None:
        """Give a probe permit back (no-op if it expired or was never granted)."""
        ...

    def close(self) -> None:
        """Close connections."""
        ...
