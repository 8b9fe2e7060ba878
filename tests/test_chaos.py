"""A shortened chaos soak (`bench/chaos.py`): under random mixed faults nothing is lost.

Two of three deployments switch to a random fault every few tens of milliseconds; the third
stays healthy. Every request that is not cancelled must return complete audio, checked by an
independent decoder; nothing may leak; no API key may reach a log line, even at DEBUG.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator

import pytest

from bench.chaos import ChaosReport, check_audio, run_chaos, wav_duration
from tests.test_shared_state import RedisServer

pytestmark = pytest.mark.anyio


def assert_kept_every_promise(report: ChaosReport) -> None:
    assert report.check() == [], report.summary()
    assert report.outcomes["ok"] >= report.requests * 0.7, report.summary()
    # The soak did soak: faults were switched, failovers happened, streams and cancels ran.
    assert report.faults_set > 10
    assert report.server_hits["flaky-a"] + report.server_hits["flaky-b"] > 0
    assert report.streaming > 0
    assert report.outcomes["cancelled"] > 0


async def test_chaos_soak_loses_nothing() -> None:
    """300 requests at concurrency 30 through random faults: complete audio or a typed story."""
    report = await run_chaos(300, 30, seed=7)
    assert_kept_every_promise(report)


@pytest.fixture
def redis_url() -> Iterator[str]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_chaos_soak_with_shared_breakers_loses_nothing(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same soak with breaker state shared through Redis: no request waits on it or fails."""
    monkeypatch.setenv("RESILIENT_TTS_REDIS_PREFIX", f"chaos_{uuid.uuid4().hex[:8]}")
    report = await run_chaos(300, 30, seed=11, redis_url=redis_url)
    assert_kept_every_promise(report)


def test_the_audio_check_catches_a_truncated_clip() -> None:
    """The soak's own checker fails a WAV one sample short of its header, or cut short."""
    rate, samples = 24_000, 2_400  # "ten chars" at 0.01 s each
    pcm = b"\x01\x00" * samples
    header = (
        b"RIFF" + (36 + len(pcm)).to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little")
    )
    header += (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + rate.to_bytes(4, "little")
    header += (
        (rate * 2).to_bytes(4, "little") + (2).to_bytes(2, "little") + (16).to_bytes(2, "little")
    )
    wav = header + b"data" + len(pcm).to_bytes(4, "little") + pcm
    assert wav_duration(wav) == pytest.approx(0.1)
    assert check_audio(wav, "wav", 10) is None
    assert check_audio(wav[:-2], "wav", 10) is not None
    assert check_audio(wav[:30], "wav", 10) is not None
    assert check_audio(pcm[:-2], "pcm", 10) is None  # within one sample
    assert check_audio(pcm[: len(pcm) // 2], "pcm", 10) is not None
    assert check_audio(b"\xff\xfb" + b"\x00" * 50, "mp3", 10) is not None
