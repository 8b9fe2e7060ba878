"""What resilient_tts costs on the healthy path, against raw `AsyncOpenAI` on the same server.

Starts a fake TTS server in its own process (so its CPU is not counted), then alternates
rounds of raw `AsyncOpenAI().audio.speech.create` and `SpeechClient().audio.speech.create`
at concurrency 1 and 32, and prints p50/p99 latency and client CPU per request as ratios.
Also times a request whose primary is a dead port, before and after its breaker opens, and
compares the httpx2 and aiohttp transports under asyncio.

    python bench/overhead.py                 # about a minute
    python bench/overhead.py --requests 200  # quicker, noisier
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import closing
from typing import Any

import anyio
from openai import AsyncOpenAI

from resilient_tts import BreakerPolicy, Deployment, SpeechClient

TEXT = "The quick brown fox jumps over the lazy dog."  # about 0.44 s of audio at 0.01 s/char
Call = Callable[[], Awaitable[object]]


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "resilient_tts.testing", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    process.stdout.readline()  # the server prints its URL once it listens
    return process


async def measure(call: Call, *, requests: int, concurrency: int) -> tuple[list[float], float]:
    """Latencies (s) of `requests` calls made `concurrency` at a time, and CPU seconds per call."""
    latencies: list[float] = []
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    cpu = time.process_time()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    return latencies, (time.process_time() - cpu) / requests


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def compare(base_url: str, *, requests: int, rounds: int, transport: str) -> None:
    raw = AsyncOpenAI(base_url=base_url, api_key="sk-bench", max_retries=0)
    if transport == "aiohttp":
        from openai import DefaultAioHttpClient

        raw = AsyncOpenAI(
            base_url=base_url, api_key="sk-bench", max_retries=0, http_client=DefaultAioHttpClient()
        )
    ours = SpeechClient(
        models={
            "kokoro": [
                Deployment(name="local", base_url=base_url, model="kokoro", api_key="sk-bench")
            ]
        },
        transport=transport,  # type: ignore[arg-type]
    )
    args: dict[str, Any] = {
        "model": "kokoro",
        "voice": "alloy",
        "input": TEXT,
        "response_format": "wav",
    }

    async def call_raw() -> object:
        return (await raw.audio.speech.create(**args)).content

    async def call_ours() -> object:
        return (await ours.audio.speech.create(**args)).content

    async with ours:
        for concurrency in (1, 32):
            stats: dict[str, tuple[list[float], list[float]]] = {"raw": ([], []), "ours": ([], [])}
            await measure(call_raw, requests=50, concurrency=concurrency)  # warm up both
            await measure(call_ours, requests=50, concurrency=concurrency)
            for _ in range(rounds):  # alternate, so drift hits both alike
                for name, call in (("raw", call_raw), ("ours", call_ours)):
                    latencies, cpu = await measure(call, requests=requests, concurrency=concurrency)
                    stats[name][0].extend(latencies)
                    stats[name][1].append(cpu)
            report(f"{transport}, concurrency {concurrency}", stats)
    await raw.close()


def report(title: str, stats: dict[str, tuple[list[float], list[float]]]) -> None:
    (raw_lat, raw_cpu), (our_lat, our_cpu) = stats["raw"], stats["ours"]
    rows = [
        ("p50 latency", percentile(raw_lat, 0.5), percentile(our_lat, 0.5)),
        ("p99 latency", percentile(raw_lat, 0.99), percentile(our_lat, 0.99)),
        ("CPU / request", statistics.median(raw_cpu), statistics.median(our_cpu)),
    ]
    print(f"\n{title}: {len(raw_lat)} requests each")
    print(f"  {'':14} {'raw AsyncOpenAI':>16} {'resilient_tts':>14} {'ratio':>7}")
    for name, raw, ours in rows:
        print(f"  {name:14} {raw * 1e3:13.3f} ms {ours * 1e3:11.3f} ms {ours / raw:7.3f}")


async def dead_primary(base_url: str, *, requests: int) -> None:
    """A pool whose first deployment is a closed port, with its breaker kept closed and open."""
    dead = f"http://127.0.0.1:{free_port()}/v1"
    pool = [
        Deployment(name="dead", base_url=dead, model="kokoro"),
        Deployment(name="live", base_url=base_url, model="kokoro"),
    ]
    never_trips = BreakerPolicy(consecutive_failures=10**9, minimum_calls=10**9)
    trips_at_once = BreakerPolicy(consecutive_failures=1, open_seconds=3600, max_open_seconds=3600)
    clients = {
        "healthy pool": SpeechClient(models={"kokoro": pool[1:]}, transport="httpx"),
        "dead primary, breaker closed": SpeechClient(
            models={"kokoro": pool}, transport="httpx", breaker=never_trips
        ),
        "dead primary, breaker open": SpeechClient(
            models={"kokoro": pool}, transport="httpx", breaker=trips_at_once
        ),
    }
    args: dict[str, Any] = {
        "model": "kokoro",
        "voice": "alloy",
        "input": TEXT,
        "response_format": "wav",
    }
    logging.getLogger("resilient_tts").setLevel(logging.CRITICAL)  # thousands of expected failures
    print("\ndead primary (connection refused), concurrency 1, p50:")
    healthy = 0.0
    for name, client in clients.items():
        async with client:
            call = functools.partial(client.audio.speech.create, **args)
            await measure(call, requests=20, concurrency=1)  # warm up (and trip the breaker)
            latencies, _ = await measure(call, requests=requests, concurrency=1)
        p50 = percentile(latencies, 0.5)
        healthy = healthy or p50
        print(f"  {name:30} {p50 * 1e3:8.3f} ms  ({p50 / healthy:.2f}x healthy)")


async def main(args: argparse.Namespace) -> None:
    port = free_port()
    server = start_server(port)
    try:
        base_url = f"http://127.0.0.1:{port}/v1"
        print(
            f"python {sys.version.split()[0]}, {os.cpu_count()} cores; "
            f"server in its own process at {base_url}"
        )
        for transport in args.transports:
            await compare(base_url, requests=args.requests, rounds=args.rounds, transport=transport)
        await dead_primary(base_url, requests=args.requests)
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=400, help="requests per round and side")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--transports", nargs="+", default=["httpx", "aiohttp"], choices=["httpx", "aiohttp"]
    )
    anyio.run(main, parser.parse_args())
