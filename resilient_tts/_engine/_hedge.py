"""Hedged attempts (SPEC §5): a slow first byte starts the next deployment too.

`race` runs one contestant; whenever `delay` seconds pass without a first byte from any of
them, it asks for one more (`next_contestant`, which spends a retry-budget token or says no).
The first contestant to receive its first byte, or failing that to finish with a result, wins;
the others are cancelled, which releases their breaker permits without counting a failure.
A contestant that fails simply leaves the race; the others keep going.

The first byte is signalled through `_attempt.on_first_byte`, a context variable each
contestant's task sets for itself, so the attempt code needs no knowledge of races.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio

from ._attempt import on_first_byte

__all__ = ["Contestant", "Outcome", "race"]

L = TypeVar("L")  # what names a contestant (a deployment)
R = TypeVar("R")  # what a contestant returns when it wins


@dataclass(frozen=True, slots=True)
class Contestant(Generic[L, R]):
    label: L
    run: Callable[[], Awaitable[R | None]]  # None: it failed


@dataclass(frozen=True, slots=True)
class Outcome(Generic[L, R]):
    """The winner's result (None when every contestant failed), the contestants cancelled
    because another won, with how long each had run, and results that came in too late."""

    result: R | None
    cancelled: list[tuple[L, float]]
    surplus: list[R]


@dataclass(eq=False)
class _Entry(Generic[L, R]):
    contestant: Contestant[L, R]
    started: float
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    first_byte: bool = False
    done: bool = False
    result: R | None = None


async def race(
    first: Contestant[L, R],
    next_contestant: Callable[[], Awaitable[Contestant[L, R] | None]],
    *,
    delay: float,
    on_cancel: Callable[[L, float], None] = lambda label, elapsed: None,
    clock: Callable[[], float] = anyio.current_time,
) -> Outcome[L, R]:
    """Runs `first`, hedged every `delay` seconds without a first byte; see the module doc.

    `on_cancel(label, seconds it ran)` is called for each loser as it is cancelled, before
    the winner has finished, so records keep the order things happened in.
    """
    entries: list[_Entry[L, R]] = []
    wake = anyio.Event()

    def changed() -> None:
        nonlocal wake
        wake.set()
        wake = anyio.Event()

    async def run(entry: _Entry[L, R]) -> None:
        def arrived() -> None:
            entry.first_byte = True
            changed()

        on_first_byte.set(arrived)  # this task's own copy of the context
        try:
            with entry.scope:
                entry.result = await entry.contestant.run()
        finally:
            entry.done = True
            changed()

    winner: _Entry[L, R] | None = None
    async with anyio.create_task_group() as group:

        def start(contestant: Contestant[L, R]) -> None:
            entry = _Entry(contestant, clock())
            entries.append(entry)
            group.start_soon(run, entry)

        start(first)
        hedge_at = clock() + delay
        while winner is None:
            winner = _leader(entries)
            if winner is not None or all(entry.done for entry in entries):
                break
            waiting = wake
            with anyio.move_on_after(max(0.0, hedge_at - clock())):
                await waiting.wait()
            if clock() >= hedge_at:
                hedge = await next_contestant()
                if hedge is None:
                    hedge_at = math.inf  # nothing more to start: wait for those running
                else:
                    start(hedge)
                    hedge_at = clock() + delay
        cancelled = []
        for entry in entries:
            if entry is not winner and not entry.done:
                entry.scope.cancel()
                ran = clock() - entry.started
                cancelled.append((entry.contestant.label, ran))
                on_cancel(entry.contestant.label, ran)
    surplus = [
        entry.result for entry in entries if entry is not winner and entry.result is not None
    ]
    return Outcome(None if winner is None else winner.result, cancelled, surplus)


def _leader(entries: list[_Entry[L, R]]) -> _Entry[L, R] | None:
    """The first to have its first byte, else the first to have finished with a result."""
    for entry in entries:
        if entry.first_byte and not (entry.done and entry.result is None):
            return entry
    for entry in entries:
        if entry.done and entry.result is not None:
            return entry
    return None
