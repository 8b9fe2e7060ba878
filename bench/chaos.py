"""Chaos soak: random mixed faults on two of three deployments, and nothing may be lost.

Three fake deployments serve one pool; a chaos task switches each of the first two to a random
fault every few tens of milliseconds (refuse, reset, hang, slow first byte, stall, cut body,
5xx, 429 with Retry-After, a 200 that is not audio, or healthy again); the third is always
healthy. Requests of random length and format, streaming and not, some cancelled by their
caller at a random moment, run at a fixed concurrency. Then it checks:

- every request that was not cancelled returned complete, valid audio, decoded here
  independently (WAV/PCM parsed, the rest decoded with PyAV) and as long as the fake server
  made it; a streamed request may instead end in `StreamInterruptedError`, never in a
  truncated success;
- no socket or task was left behind (counted before and after), no breaker holds a
  half-open probe permit, and no log line at DEBUG level shows an API key.

    python -m bench.chaos                               # 10,000 requests at concurrency 50
    python -m bench.chaos --requests 1000 --backend trio
    python -m bench.chaos --redis-url redis://127.0.0.1:6379/0   # with shared breaker state

`tests/test_chaos.py` runs a shortened soak with `run_chaos`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import math
import os
import random
import statistics
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import av
import sniffio
from pydantic import SecretStr

from resilient_tts import (
    BreakerPolicy,
    Deployment,
    ResilientTTSError,
    SpeechClient,
    StreamInterruptedError,
)
from resilient_tts.testing import FakeSpeechServer, Fault

SAMPLE_RATE = 24_000
SECONDS_PER_CHAR = 0.01  # FakeSpeechServer's default: a clip lasts len(input) * 0.01 s
# Weighted towards formats that pass straight through; every format appears.
FORMATS = ("wav", "wav", "pcm", "pcm", "mp3", "mp3", "flac", "opus", "aac")
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven")
# Lossy codecs pad and prime; the lossless ones must match to the millisecond.
_TOLERANCE = {"wav": 0.001, "pcm": 0.001, "flac": 0.001, "mp3": 0.03, "aac": 0.001, "opus": 0.03}


def random_fault(rng: random.Random) -> Fault:
    """One fault from SPEC §7's list, or health (a third of the time)."""
    choices: list[Callable[[], Fault]] = [
        Fault.ok,
        Fault.ok,
        Fault.ok,
        Fault.refuse,
        Fault.reset,
        Fault.hang,
        lambda: Fault.slow_first_byte(rng.uniform(0.2, 2.0)),
        lambda: Fault.stall(rng.randint(0, 3000), rng.choice([None, 0.2, 2.0])),
        lambda: Fault.cut(rng.randint(0, 3000)),
        lambda: Fault.status(rng.choice([500, 502, 503, 504])),
        lambda: Fault.status(429, retry_after=rng.choice([1, 2])),
        lambda: Fault.status(503, retry_after=1),
        lambda: Fault.not_audio(rng.choice(["json", "html", "empty"])),
    ]
    return rng.choice(choices)()


@dataclass
class ChaosReport:
    """What a soak did and found; `violations` must be empty."""

    backend: str
    requests: int
    concurrency: int
    elapsed: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # successful requests, seconds
    violations: list[str] = field(default_factory=list)
    streaming: int = 0
    fds_before: int = 0
    fds_after: int = 0
    tasks_before: int = 0
    tasks_after: int = 0
    probes_left: dict[str, int] = field(default_factory=dict)
    log_lines: int = 0
    key_leaks: list[str] = field(default_factory=list)
    faults_set: int = 0
    server_hits: dict[str, int] = field(default_factory=dict)

    def check(self) -> list[str]:
        """Every broken promise, as a sentence; empty when the soak passed."""
        problems = list(self.violations)
        if self.outcomes["failed"]:
            problems.append(
                f"{self.outcomes['failed']} requests failed although one deployment was healthy"
            )
        if self.fds_after > self.fds_before:
            problems.append(
                f"file descriptors leaked: {self.fds_before} before, {self.fds_after} after"
            )
        if self.tasks_after > self.tasks_before:
            problems.append(f"tasks leaked: {self.tasks_before} before, {self.tasks_after} after")
        held = {name: n for name, n in self.probes_left.items() if n}
        if held:
            problems.append(f"half-open probe permits still held: {held}")
        if self.key_leaks:
            problems.append(
                f"API keys in {len(self.key_leaks)} log lines, e.g. {self.key_leaks[0][:200]!r}"
            )
        return problems

    def summary(self) -> str:
        done = self.outcomes["ok"]
        ordered = sorted(self.latencies)
        p50 = statistics.median(ordered) if ordered else math.nan
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else math.nan
        counts = ", ".join(f"{name} {count}" for name, count in sorted(self.outcomes.items()))
        return "\n".join(
            [
                f"chaos soak ({self.backend}): {self.requests} requests at concurrency "
                f"{self.concurrency} in {self.elapsed:.1f} s: "
                f"{done / self.elapsed:.1f} complete clips/s",
                f"  outcomes: {counts} (streamed: {self.streaming})",
                f"  latency of successes: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms",
                f"  faults switched: {self.faults_set}; attempts per server: {self.server_hits}",
                f"  file descriptors {self.fds_before} -> {self.fds_after}, "
                f"tasks {self.tasks_before} -> {self.tasks_after}, "
                f"probe permits held {self.probes_left}",
                f"  log lines at DEBUG: {self.log_lines}, "
                f"showing an API key: {len(self.key_leaks)}",
                "  verdict: " + ("; ".join(self.check()) or "every promise kept"),
            ]
        )


async def run_chaos(
    requests: int = 10_000,
    concurrency: int = 50,
    *,
    seed: int = 1,
    cancel_share: float = 0.1,
    stream_share: float = 0.3,
    fault_period: float = 0.15,
    redis_url: str | None = None,
) -> ChaosReport:
    """Run one soak in the current event loop (asyncio or trio) and report what happened."""
    rng = random.Random(seed)
    report = ChaosReport(sniffio.current_async_library(), requests, concurrency)
    keys = {
        name: f"sk-chaos-{name}-{rng.getrandbits(64):016x}"
        for name in ("flaky-a", "flaky-b", "healthy")
    }
    report.fds_before, report.tasks_before = open_fds(), running_tasks()
    with watching_logs(keys.values(), report):
        async with (
            FakeSpeechServer(name="flaky-a") as flaky_a,
            FakeSpeechServer(name="flaky-b") as flaky_b,
            FakeSpeechServer(name="healthy") as healthy,
        ):
            client = chaos_client([flaky_a, flaky_b, healthy], keys, redis_url=redis_url)
            async with client, anyio.create_task_group() as chaos:
                for server in (flaky_a, flaky_b):
                    chaos.start_soon(
                        keep_breaking, server, random.Random(rng.random()), fault_period, report
                    )
                started = time.perf_counter()
                await drive(
                    client, report, rng, cancel_share=cancel_share, stream_share=stream_share
                )
                report.elapsed = time.perf_counter() - started
                chaos.cancel_scope.cancel()
                for deployment in client._live_pools()["kokoro"].deployments:
                    report.probes_left[deployment.name] = (
                        deployment.breaker.snapshot().probes_in_flight
                    )
            report.server_hits = {s.name: s.hits for s in (flaky_a, flaky_b, healthy)}
    report.fds_after, report.tasks_after = open_fds(), running_tasks()
    return report


def chaos_client(
    servers: list[FakeSpeechServer], keys: dict[str, str], *, redis_url: str | None
) -> SpeechClient:
    deployments = [
        Deployment(
            name=server.name,
            base_url=server.base_url,
            model=server.model,
            api_key=SecretStr(keys[server.name]),
            # The healthy server shares a loaded CPU with everything else: give it room.
            first_byte_timeout=5.0 if server.name == "healthy" else 1.0,
            stall_timeout=2.0 if server.name == "healthy" else 0.5,
        )
        for server in servers
    ]
    return SpeechClient(
        models={"kokoro": deployments},
        transport="httpx",  # the one transport both event loops share
        attempt_timeout=8.0,
        deadline=30.0,
        # Breakers cycle open / half-open / closed many times: the faults stay in play.
        breaker_open_seconds=1.0,
        breaker=BreakerPolicy(
            consecutive_failures=3, half_open_probes=1, open_seconds=1.0, max_open_seconds=2.0
        ),
        redis_url=redis_url,
    )


async def keep_breaking(
    server: FakeSpeechServer, rng: random.Random, period: float, report: ChaosReport
) -> None:
    while True:
        server.set_fault(random_fault(rng))
        report.faults_set += 1
        await anyio.sleep(rng.uniform(0.02, period))


async def drive(
    client: SpeechClient,
    report: ChaosReport,
    rng: random.Random,
    *,
    cancel_share: float,
    stream_share: float,
) -> None:
    """Make ``report.requests`` requests, ``report.concurrency`` at a time."""
    plans = [plan(rng, cancel_share, stream_share) for _ in range(report.requests)]
    queue = iter(plans)

    async def worker() -> None:
        for text, response_format, streaming, cancel_after in queue:
            await one_request(client, report, text, response_format, streaming, cancel_after)

    async with anyio.create_task_group() as group:
        for _ in range(report.concurrency):
            group.start_soon(worker)


def plan(
    rng: random.Random, cancel_share: float, stream_share: float
) -> tuple[str, str, bool, float | None]:
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 20)))
    cancel_after = rng.uniform(0.0, 1.5) if rng.random() < cancel_share else None
    return text, rng.choice(FORMATS), rng.random() < stream_share, cancel_after


async def one_request(
    client: SpeechClient,
    report: ChaosReport,
    text: str,
    response_format: Any,
    streaming: bool,
    cancel_after: float | None,
) -> None:
    started = time.perf_counter()
    content = b""
    outcome = "ok"
    report.streaming += streaming
    with anyio.CancelScope() as scope:
        if cancel_after is not None:
            scope.deadline = anyio.current_time() + cancel_after
        try:
            if streaming:
                content = await streamed(client, text, response_format)
            else:
                speech = await client.audio.speech.create(
                    model="kokoro", voice="alloy", input=text, response_format=response_format
                )
                content = speech.content
        except StreamInterruptedError as exc:
            outcome = "interrupted"
            if not exc.bytes_delivered:
                report.violations.append(f"StreamInterruptedError with no bytes delivered: {exc}")
        except ResilientTTSError as exc:
            outcome = "failed"
            report.violations.append(f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            outcome = "unexpected"
            report.violations.append(f"unexpected {type(exc).__name__}: {exc!r}")
    if scope.cancelled_caught:
        outcome = "cancelled"
    elif outcome == "ok":
        problem = await anyio.to_thread.run_sync(check_audio, content, response_format, len(text))
        if problem is None:
            report.latencies.append(time.perf_counter() - started)
        else:
            outcome = "truncated or invalid"
            report.violations.append(
                f"a success with bad audio ({response_format}, {len(text)} chars): {problem}"
            )
    report.outcomes[outcome] += 1


async def streamed(client: SpeechClient, text: str, response_format: Any) -> bytes:
    parts = []
    async with client.audio.speech.with_streaming_response.create(
        model="kokoro",
        voice="alloy",
        input=text,
        response_format=response_format,
    ) as response:
        async for chunk in response.iter_bytes():
            parts.append(chunk)
    return b"".join(parts)


# -- checking audio independently ------------------------------------------------------------


def check_audio(content: bytes, response_format: str, chars: int) -> str | None:
    """None if ``content`` is a complete clip of ``chars`` characters, else what is wrong."""
    expected = max(0.1, chars * SECONDS_PER_CHAR)
    try:
        if response_format == "pcm":
            if len(content) % 2:
                return f"odd PCM length {len(content)}"
            duration = len(content) / 2 / SAMPLE_RATE
        elif response_format == "wav":
            duration = wav_duration(content)
        else:
            duration = decoded_duration(content, response_format)
    except (ValueError, struct.error, av.FFmpegError) as exc:
        return f"does not decode: {exc}"
    if response_format == "aac":
        # ADTS cannot tell a decoder to drop the encoder's 1024 samples of priming, nor the
        # padding of the last 1024-sample frame: the clip decodes that much longer.
        expected = math.ceil((round(expected * SAMPLE_RATE) + 1024) / 1024) * 1024 / SAMPLE_RATE
    if abs(duration - expected) > _TOLERANCE[response_format] + 1 / SAMPLE_RATE:
        return f"{duration:.3f} s of audio, expected {expected:.3f} s"
    return None


def wav_duration(content: bytes) -> float:
    """Seconds of 16-bit mono PCM in a RIFF/WAVE file; streamed WAV may say 0xFFFFFFFF."""
    if content[:4] != b"RIFF" or content[8:12] != b"WAVE":
        raise ValueError("not RIFF/WAVE")
    offset, rate, channels, bits = 12, 0, 0, 0
    while offset + 8 <= len(content):
        chunk, size = (
            content[offset : offset + 4],
            struct.unpack("<I", content[offset + 4 : offset + 8])[0],
        )
        body = offset + 8
        if chunk == b"fmt ":
            _, channels, rate, _, _, bits = struct.unpack("<HHIIHH", content[body : body + 16])
        elif chunk == b"data":
            available = len(content) - body
            if size != 0xFFFFFFFF and size != available:
                raise ValueError(f"data chunk says {size} bytes, {available} present")
            if (channels, rate, bits) != (1, SAMPLE_RATE, 16):
                raise ValueError(f"{channels} channels, {rate} Hz, {bits} bits")
            return available / 2 / rate
        offset = body + size + (size & 1)
    raise ValueError("no data chunk")


def decoded_duration(content: bytes, response_format: str) -> float:
    container = {"mp3": "mp3", "opus": "ogg", "aac": None, "flac": "flac"}[response_format]
    samples = 0
    rate = 0
    with av.open(io.BytesIO(content), mode="r", format=container) as source:
        stream = source.streams.audio[0]
        if stream.codec_context.channels != 1:
            raise ValueError(f"{stream.codec_context.channels} channels")
        for frame in source.decode(stream):
            samples += frame.samples
            rate = frame.sample_rate
    if not samples:
        raise ValueError("no audio frames")
    return samples / rate


# -- leaks -----------------------------------------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def running_tasks() -> int:
    """Tasks alive in this event loop (asyncio or trio)."""
    if sniffio.current_async_library() == "trio":
        import trio

        def count(task: Any) -> int:
            return 1 + sum(
                count(child) for nursery in task.child_nurseries for child in nursery.child_tasks
            )

        return count(trio.lowlevel.current_root_task())
    import asyncio

    return len(asyncio.all_tasks())


class _KeyWatch(logging.Handler):
    """Formats every record, as a log file would, and notes those that show a key."""

    def __init__(self, keys: list[str], report: ChaosReport) -> None:
        super().__init__(logging.DEBUG)
        self.keys = keys
        self.report = report
        self.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record) + repr(getattr(record, "__dict__", {}))
        self.report.log_lines += 1
        if any(key in line for key in self.keys):
            self.report.key_leaks.append(line)


@contextlib.contextmanager
def watching_logs(keys: Iterable[str], report: ChaosReport) -> Iterator[None]:
    root = logging.getLogger()
    handler = _KeyWatch(list(keys), report)
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--redis-url", help="share breaker state through this Redis")
    args = parser.parse_args(argv)
    report = anyio.run(
        lambda: run_chaos(
            args.requests, args.concurrency, seed=args.seed, redis_url=args.redis_url
        ),
        backend=args.backend,
    )
    print(report.summary())
    for violation in report.violations[:20]:
        print("  !", violation)
    return 1 if report.check() else 0


if __name__ == "__main__":
    sys.exit(main())
