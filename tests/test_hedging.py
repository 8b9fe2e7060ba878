"""SPEC §5 hedging: a slow first byte starts the next deployment too; the first to answer wins."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from resilient_tts import (
    BreakerState,
    BudgetExhausted,
    Event,
    HedgeCancelled,
    HedgeStarted,
    Pool,
    RetryPolicy,
    SpeechClient,
)
from resilient_tts.testing import FakeSpeechServer, Fault
from tests.helpers import MOCK_CLOCK, deployments, speak

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", [MOCK_CLOCK])]

TEXT = "Hedge your bets."


@contextlib.asynccontextmanager
async def hedged_client(
    servers: list[FakeSpeechServer], *, hedge_delay: float = 0.5, **settings: Any
) -> AsyncIterator[SpeechClient]:
    settings.setdefault("first_byte_timeout", 10.0)
    settings.setdefault("stall_timeout", 5.0)
    settings.setdefault("attempt_timeout", 20.0)
    settings.setdefault("deadline", 30.0)
    settings.setdefault("transport", "auto")
    pool = Pool(deployments=deployments(servers), hedge_delay=hedge_delay)
    async with SpeechClient(models={"kokoro": pool}, **settings) as client:
        yield client


def outcomes(result: Any) -> list[str]:
    return [
        f"{a.deployment}:{a.kind.value if a.kind else a.outcome.value}" for a in result.attempts
    ]


def breaker(client: SpeechClient, name: str) -> Any:
    (found,) = [d for d in client._live_pools()["kokoro"].deployments if d.name == name]
    return found.breaker


async def test_hedge_beats_a_slow_primary() -> None:
    """No first byte from the primary after the hedge delay: the backup starts too, answers
    first and serves; the primary is cancelled, which is not a failure."""
    seen: list[Event] = []
    async with (
        FakeSpeechServer(name="primary", fault=Fault.slow_first_byte(5)) as a,
        FakeSpeechServer(name="backup") as b,
        hedged_client([a, b], hooks=[seen.append]) as client,
    ):
        started = anyio.current_time()
        speech = await speak(client, TEXT)
        elapsed = anyio.current_time() - started
        assert breaker(client, "primary").snapshot().consecutive_failures == 0
        assert breaker(client, "primary").state is BreakerState.CLOSED
    assert speech.deployment == "backup"
    assert 0.5 <= elapsed < 1
    # The backup may read its short body to the end before the race is called: either order.
    assert sorted(outcomes(speech)) == ["backup:success", "primary:cancelled"]
    hedges = [
        (type(e).__name__, e.deployment)
        for e in seen
        if isinstance(e, HedgeStarted | HedgeCancelled)
    ]
    assert hedges == [("HedgeStarted", "backup"), ("HedgeCancelled", "primary")]


async def test_hedged_stream_is_served_by_whoever_sends_audio_first() -> None:
    """Streaming too: the hedge that sends its first byte first is the stream."""
    async with (
        FakeSpeechServer(name="primary", fault=Fault.slow_first_byte(5), chunked=True) as a,
        FakeSpeechServer(name="backup", chunked=True) as b,
        hedged_client([a, b]) as client,
    ):
        started = anyio.current_time()
        async with client.audio.speech.with_streaming_response.create(
            model="kokoro", voice="alloy", input=TEXT, response_format="wav"
        ) as response:
            entered = anyio.current_time() - started
            data = await response.read()
        expected = b.audio("wav", TEXT)
    assert 0.5 <= entered < 1
    assert data == expected
    assert outcomes(response) == ["primary:cancelled", "backup:success"]


async def test_no_hedge_when_the_first_byte_comes_in_time() -> None:
    """A primary that answers within the hedge delay is never hedged."""
    async with (
        FakeSpeechServer(name="primary", fault=Fault.slow_first_byte(0.2)) as a,
        FakeSpeechServer(name="backup") as b,
        hedged_client([a, b]) as client,
    ):
        speech = await speak(client, TEXT)
        hits = b.hits
    assert speech.deployment == "primary"
    assert hits == 0


async def test_hedges_draw_on_the_retry_budget() -> None:
    """With no retry token left there is no hedge: the slow primary is waited for."""
    seen: list[Event] = []
    empty = RetryPolicy(budget_ratio=0, budget_min_per_second=0, budget_capacity=0)
    async with (
        FakeSpeechServer(name="primary", fault=Fault.slow_first_byte(2)) as a,
        FakeSpeechServer(name="backup") as b,
        hedged_client([a, b], retry=empty, hooks=[seen.append]) as client,
    ):
        started = anyio.current_time()
        speech = await speak(client, TEXT)
        elapsed = anyio.current_time() - started
        hits = b.hits
    assert speech.deployment == "primary"
    assert elapsed >= 2
    assert hits == 0
    assert [e.deployment for e in seen if isinstance(e, BudgetExhausted)] == ["backup"]


async def test_a_failed_hedge_leaves_the_race_to_the_others() -> None:
    """The hedge fails at once (refused); the slow primary still serves."""
    async with (
        FakeSpeechServer(name="primary", fault=Fault.slow_first_byte(2)) as a,
        FakeSpeechServer(name="backup", fault=Fault.refuse()) as b,
        hedged_client([a, b]) as client,
    ):
        speech = await speak(client, TEXT)
    assert speech.deployment == "primary"
    assert outcomes(speech) == ["backup:connect", "primary:success"]


async def test_a_winner_whose_body_fails_hands_back_to_the_cancelled_loser() -> None:
    """The hedge sends its first byte first, then its body is cut: the primary it beat was
    cancelled, not failed, so it is tried again and serves."""
    async with (
        FakeSpeechServer(name="primary", fault=Fault.slow_first_byte(2)) as a,
        FakeSpeechServer(name="backup", fault=Fault.cut(after_bytes=100)) as b,
        hedged_client([a, b]) as client,
    ):
        speech = await speak(client, TEXT)
    assert speech.deployment == "primary"
    assert sorted(outcomes(speech)[:2]) == ["backup:short_body", "primary:cancelled"]
    assert outcomes(speech)[2:] == ["primary:success"]


async def test_hedging_is_off_by_default() -> None:
    """Without a hedge delay, a slow primary is simply waited for (up to its timeouts)."""
    async with (
        FakeSpeechServer(name="primary", fault=Fault.slow_first_byte(2)) as a,
        FakeSpeechServer(name="backup") as b,
        SpeechClient(models={"kokoro": deployments([a, b])}, transport="auto") as client,
    ):
        speech = await speak(client, TEXT)
        hits = b.hits
    assert speech.deployment == "primary"
    assert hits == 0
