"""`resilient-tts demo`: failover you can watch, with nothing to configure.

Three fake OpenAI-compatible speech servers from `resilient_tts.testing` start on loopback
in this process: ``gpu-a`` (preferred), ``gpu-b`` and ``cloud``, one logical model
``kokoro``. A steady stream of requests goes out while ``gpu-a`` crashes, ``gpu-b`` hangs,
and both come back; each line shows who served the request, every attempt made, and each
breaker's state. Every clip is written to the output directory. It ignores your
``RESILIENT_TTS_*`` configuration and finishes unattended in well under 30 seconds.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from ._client import SpeechClient
from ._config._values import Deployment
from ._core._breaker import BreakerPolicy, BreakerState
from ._core._records import Attempt, AttemptOutcome
from ._exceptions import AllDeploymentsFailedError
from ._observe._events import Event, FailedOver
from ._observe._health import DeploymentHealth
from .testing import FakeSpeechServer, Fault

__all__ = ["DemoOptions", "run_demo"]

NAMES = ("gpu-a", "gpu-b", "cloud")
_LINES = (
    "The kettle is on.",
    "Your train leaves from platform four.",
    "Three new messages.",
    "Turn left in two hundred metres.",
    "The meeting starts in five minutes.",
    "Rain is expected after noon.",
)


@dataclass(frozen=True)
class DemoOptions:
    """How long the demo runs and where its audio goes. `quick` paces requests 5x faster."""

    requests: int = 30
    out: Path = Path("resilient-tts-demo")
    quick: bool = False

    @property
    def interval(self) -> float:
        return 0.05 if self.quick else 0.25


@dataclass(frozen=True)
class _Phase:
    starts_at: float  # fraction of the planned requests
    banner: str
    apply: Callable[[dict[str, FakeSpeechServer]], None]


def _phases(first_byte_timeout: float) -> tuple[_Phase, ...]:
    def crash_a(servers: dict[str, FakeSpeechServer]) -> None:
        servers["gpu-a"].set_fault(Fault.refuse())

    def hang_b(servers: dict[str, FakeSpeechServer]) -> None:
        servers["gpu-b"].set_fault(Fault.hang())

    def heal(servers: dict[str, FakeSpeechServer]) -> None:
        servers["gpu-a"].set_fault(Fault.ok())
        servers["gpu-b"].set_fault(Fault.ok())

    return (
        _Phase(0.2, "gpu-a crashes: its port refuses connections", crash_a),
        _Phase(0.5, f"gpu-b hangs too: no first byte within {first_byte_timeout:g}s", hang_b),
        _Phase(0.7, "gpu-a and gpu-b are back", heal),
    )


async def run_demo(options: DemoOptions, write: Callable[[str], None]) -> int:
    """Runs the demo, writing lines with `write`; returns the number of failed requests."""
    # Scaled to the pace, so breakers trip and reopen within a few requests either way.
    first_byte_timeout = 0.15 if options.quick else 0.3
    open_seconds = options.interval * 2
    breaker = BreakerPolicy(
        consecutive_failures=2,
        open_seconds=open_seconds,
        max_open_seconds=open_seconds * 2,
        jitter=0.0,
    )
    failovers: list[FailedOver] = []

    def count_failovers(event: Event) -> None:
        if isinstance(event, FailedOver):
            failovers.append(event)

    options.out.mkdir(parents=True, exist_ok=True)
    async with AsyncExitStack() as stack:
        servers = {}
        for name in NAMES:
            server = FakeSpeechServer(name=name, seconds_per_char=0.02)
            servers[name] = await stack.enter_async_context(server)
        deployments = [
            Deployment(name=s.name, base_url=s.base_url, model=s.model) for s in servers.values()
        ]
        client = SpeechClient(
            models={"kokoro": deployments},
            breaker=breaker,
            breaker_open_seconds=open_seconds,
            first_byte_timeout=first_byte_timeout,
            attempt_timeout=5.0,
            deadline=10.0,
            hooks=[count_failovers],
        )
        await stack.enter_async_context(client)
        write('resilient-tts demo: one logical model, "kokoro", served by three local deployments:')
        write("  gpu-a (preferred), then gpu-b, then cloud: fake OpenAI-compatible servers")
        write(
            f"  breakers trip after 2 failures in a row and stay open {open_seconds:g}s"
            f" (at most {breaker.max_open_seconds:g}s); audio goes to {options.out}{os.sep}"
        )
        write("")
        write(_row("req", "served by", "time", "attempts", list(NAMES)))
        run = await _traffic(client, servers, options, write, first_byte_timeout)
    counts = ", ".join(f"{name} {run.served[name]}" for name in NAMES)
    write("")
    write(f"{run.requests} requests in {run.elapsed:.1f}s: {counts}; {run.failed} failed")
    write(
        f"{len(failovers)} failovers after a failed attempt; "
        f"{run.skipped} attempts spared by an open breaker"
    )
    write(f"audio: {sum(run.served.values())} mp3 files in {options.out}{os.sep}")
    return run.failed


@dataclass
class _Run:
    requests: int = 0
    failed: int = 0
    skipped: int = 0
    elapsed: float = 0.0
    served: Counter[str] = field(default_factory=Counter)


async def _traffic(
    client: SpeechClient,
    servers: dict[str, FakeSpeechServer],
    options: DemoOptions,
    write: Callable[[str], None],
    first_byte_timeout: float,
) -> _Run:
    phases = list(_phases(first_byte_timeout))
    run = _Run()
    primary_back = 0
    started = anyio.current_time()
    # After the last phase, keep going (a little) until the primary is seen serving again.
    while run.requests < options.requests or (
        primary_back < 2 and anyio.current_time() - started < 15
    ):
        run.requests += 1
        number = run.requests
        while phases and number > phases[0].starts_at * options.requests:
            phase = phases.pop(0)
            phase.apply(servers)
            write(f"== {phase.banner} ==")
        sent = anyio.current_time()
        try:
            speech = await client.audio.speech.create(
                model="kokoro",
                voice="alloy",
                input=_LINES[number % len(_LINES)],
                response_format="mp3",
            )
        except AllDeploymentsFailedError as exc:
            run.failed += 1
            attempts, who = exc.attempts, "-"
        else:
            attempts, who = speech.attempts, speech.deployment
            run.served[who] += 1
            await anyio.Path(options.out / f"{number:03d}-{who}.mp3").write_bytes(speech.content)
        took = f"{(anyio.current_time() - sent) * 1000:.0f}ms"
        run.skipped += sum(1 for a in attempts if a.outcome is AttemptOutcome.SKIPPED)
        if not phases and who == "gpu-a":
            primary_back += 1
        states = [_state(d) for d in client.health().pool("kokoro").deployments]
        write(_row(str(number), who, took, _story(attempts), states))
        await anyio.sleep(options.interval)
    run.elapsed = anyio.current_time() - started
    return run


def _row(number: str, who: str, took: str, story: str, states: list[str]) -> str:
    line = f"  {number:>3}  {who:<9} {took:>6}  {story:<52} " + " ".join(f"{s:<10}" for s in states)
    return line.rstrip()


def _story(attempts: tuple[Attempt, ...]) -> str:
    parts = []
    for attempt in attempts:
        if attempt.outcome is AttemptOutcome.SUCCESS:
            parts.append(f"{attempt.deployment} ok")
        elif attempt.outcome is AttemptOutcome.SKIPPED:
            parts.append(f"{attempt.deployment} skipped")
        else:
            kind = attempt.kind.value if attempt.kind else attempt.outcome.value
            parts.append(f"{attempt.deployment} {kind}")
    return ", ".join(parts)


def _state(health: DeploymentHealth) -> str:
    if health.state is BreakerState.OPEN:
        return f"open {max(health.ready_in, 0.1):.1f}s"
    return "half-open" if health.state is BreakerState.HALF_OPEN else "closed"
