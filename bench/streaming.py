"""Streaming: time to first byte against raw `AsyncOpenAI`, and memory over an hour of audio.

1. Time to first byte. A fake TTS server runs in its own process (``python -m
   resilient_tts.testing --chunked``); rounds of raw ``AsyncOpenAI().audio.speech
   .with_streaming_response.create`` alternate with `SpeechClient`'s, both on the same
   transport, and the median time from the call to the first chunk of ``iter_bytes()`` is
   compared. Once with a format the server makes (bytes passed through), once with a rate it
   does not (decoded and re-encoded on the fly).

2. Memory. A one-hour stream (86.4 M samples, 173 MB of WAV) from a minimal server that
   generates its audio as it sends it, read through `SpeechClient`; this process's resident
   memory (VmRSS) is sampled every minute of audio. Flat means the stream never piles up.

    python bench/streaming.py                       # two or three minutes
    python bench/streaming.py --requests 50 --hours 0.25
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import closing
from typing import Any

import anyio
from anyio.abc import SocketStream
from openai import AsyncOpenAI

from resilient_tts import Deployment, SpeechClient
from resilient_tts._engine._http import build_openai_client

TEXT = "The quick brown fox jumps over the lazy dog."  # 0.44 s of audio at 0.01 s per char
RATE = 24000


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start(*command: str) -> tuple[subprocess.Popen[bytes], str]:
    process = subprocess.Popen(
        [sys.executable, *command], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert process.stdout is not None
    url = process.stdout.readline().decode().strip()  # printed once it listens
    return process, url


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


# -- 1. time to first byte ---------------------------------------------------------------

FirstByte = Callable[[], Awaitable[float]]


def raw_first_byte(client: AsyncOpenAI, fmt: str) -> FirstByte:
    async def call() -> float:
        started = time.perf_counter()
        async with client.audio.speech.with_streaming_response.create(
            model="kokoro",
            voice="alloy",
            input=TEXT,
            response_format=fmt,  # type: ignore[arg-type]
        ) as response:
            async for _ in response.iter_bytes():
                first = time.perf_counter() - started
                break
        return first

    return call


def ours_first_byte(client: SpeechClient, fmt: Any) -> FirstByte:
    async def call() -> float:
        started = time.perf_counter()
        async with client.audio.speech.with_streaming_response.create(
            model="kokoro", voice="alloy", input=TEXT, response_format=fmt
        ) as response:
            async for _ in response.iter_bytes():
                first = time.perf_counter() - started
                break
        return first

    return call


async def compare(raw: FirstByte, ours: FirstByte, requests: int) -> tuple[float, float]:
    """Median first-byte times, the two calls alternating so that drift hits both alike."""
    for _ in range(20):  # warm up: connections, the server's clip cache, codecs
        await raw()
        await ours()
    raw_times, our_times = [], []
    for _ in range(requests):
        raw_times.append(await raw())
        our_times.append(await ours())
    return statistics.median(raw_times), statistics.median(our_times)


async def first_byte_bench(requests: int) -> dict[str, Any]:
    port = free_port()
    server, url = start("-m", "resilient_tts.testing", "--port", str(port), "--chunked")
    try:
        deployment = Deployment(name="local", base_url=url, model="kokoro", api_key="sk-bench")
        # 22.05 kHz output is not what the server makes: decoded and re-encoded on the fly.
        cases = {"wav pass-through": ("wav", RATE), "mp3 at 22.05 kHz, transcoded": ("mp3", 22050)}
        results: dict[str, Any] = {}
        raw = build_openai_client(deployment, transport="aiohttp")  # resilient_tts's own choice
        try:
            for name, (fmt, rate) in cases.items():
                async with SpeechClient(models={"kokoro": [deployment]}, sample_rate=rate) as ours:
                    raw_median, our_median = await compare(
                        raw_first_byte(raw, fmt), ours_first_byte(ours, fmt), requests
                    )
                results[name] = {
                    "raw_ms": round(raw_median * 1000, 3),
                    "resilient_tts_ms": round(our_median * 1000, 3),
                    "ratio": round(our_median / raw_median, 3),
                }
        finally:
            await raw.close()
        return results
    finally:
        server.terminate()
        server.wait()


# -- 2. memory over an hour of audio --------------------------------------------------------


async def serve_hour(seconds: float) -> None:
    """A speech server that makes `seconds` of 24 kHz WAV as it sends it (the fake server
    builds whole clips in memory, which is no way to make an hour)."""
    second = b"".join(
        struct.pack("<h", round(9000 * math.sin(2 * math.pi * 440 * i / RATE))) for i in range(RATE)
    )
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI", b"RIFF", 0xFFFFFFFF, b"WAVE", b"fmt ", 16, 1, 1, RATE,
        2 * RATE, 2, 16, b"data", 0xFFFFFFFF,
    )  # fmt: skip

    def chunk(data: bytes) -> bytes:
        return f"{len(data):x}\r\n".encode() + data + b"\r\n"

    async def handle(stream: SocketStream) -> None:
        async with stream:
            request = b""
            while b"\r\n\r\n" not in request:
                request += await stream.receive()
            head, _, body = request.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1]) for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )  # fmt: skip
            while len(body) < length:
                body += await stream.receive()
            await stream.send(
                b"HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\nTransfer-Encoding: chunked\r\n"
                b"Connection: close\r\n\r\n" + chunk(header)
            )
            whole, rest = divmod(round(seconds * RATE), RATE)
            for _ in range(whole):
                await stream.send(chunk(second))
            await stream.send(chunk(second[: 2 * rest]) + b"0\r\n\r\n")

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610 (not Django)
    print(f"http://127.0.0.1:{port}/v1", flush=True)
    await listener.serve(handle)


async def memory_bench(hours: float, fmt: Any) -> dict[str, Any]:
    server, url = start(__file__, "--serve-hour", str(hours * 3600))
    try:
        deployment = Deployment(name="hour", base_url=url, model="kokoro", formats=["wav"])
        # An hour at most per request, and no byte for a minute is a stall.
        async with SpeechClient(
            models={"kokoro": [deployment]}, deadline=60, attempt_timeout=60
        ) as client:
            samples: list[tuple[float, float]] = []  # (seconds of audio, MiB resident)
            received = 0
            bytes_per_second = {"wav": 2 * RATE, "mp3": 128_000 / 8}[fmt]
            next_sample = 0.0
            started = time.perf_counter()
            async with client.audio.speech.with_streaming_response.create(
                model="kokoro", voice="alloy", input="An hour of speech.", response_format=fmt
            ) as response:
                async for chunk in response.iter_bytes():
                    received += len(chunk)
                    audio = received / bytes_per_second
                    if audio >= next_sample:
                        samples.append((audio, rss_mib()))
                        next_sample += 60
            elapsed = time.perf_counter() - started
        samples.append((received / bytes_per_second, rss_mib()))
        # Growth after the first minute: buffers and codecs are set up by then.
        settled = [rss for audio, rss in samples if audio >= 60] or [samples[-1][1]]
        return {
            "format": fmt,
            "audio_seconds": round(received / bytes_per_second),
            "bytes": received,
            "wall_seconds": round(elapsed, 1),
            "rss_first_minute_mib": round(samples[min(1, len(samples) - 1)][1], 1),
            "rss_min_mib": round(min(settled), 1),
            "rss_max_mib": round(max(settled), 1),
            "rss_end_mib": round(samples[-1][1], 1),
            "rss_growth_after_first_minute_mib": round(max(settled) - settled[0], 1),
        }
    finally:
        server.terminate()
        server.wait()


async def main(args: argparse.Namespace) -> None:
    report: dict[str, Any] = {"time_to_first_byte": await first_byte_bench(args.requests)}
    report["memory"] = [await memory_bench(args.hours, fmt) for fmt in args.formats.split(",")]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="per client and case")
    parser.add_argument("--hours", type=float, default=1.0, help="of audio for the memory run")
    parser.add_argument("--formats", default="wav,mp3", help="output formats for the memory run")
    parser.add_argument("--serve-hour", type=float, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.serve_hour is not None:
        os.environ.setdefault("PYTHONUNBUFFERED", "1")
        anyio.run(serve_hour, arguments.serve_hour)
    else:
        anyio.run(main, arguments)
