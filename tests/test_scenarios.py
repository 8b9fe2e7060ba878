"""The stories from the issue: LiteLLM's seed case, a flapping primary, and the events they emit."""

from __future__ import annotations

import anyio
import pytest

from resilient_tts import BreakerPolicy, Deployment, SpeechClient
from resilient_tts._observe._events import Event, FailedOver
from resilient_tts.testing import FakeSpeechServer, Fault
from tests.helpers import MOCK_CLOCK, client_for, speak

pytestmark = pytest.mark.anyio


async def test_seed_case_model_unknown_on_llama_swap_fails_over() -> None:
    """Logical `kokoro`: a llama-swap 400 "could not find real modelID" sends traffic to server1,
    and to server2 when server1 is down; the bad deployment is not asked again meanwhile."""
    async with (
        FakeSpeechServer(name="llama-swap", fault=Fault.model_not_found("kokoro")) as bad,
        FakeSpeechServer(name="server1") as server1,
        FakeSpeechServer(name="server2") as server2,
        client_for([bad, server1, server2]) as client,
    ):
        first = await speak(client)
        server1.set_fault(Fault.refuse())
        second = await speak(client)
        third = await speak(client)
    assert first.deployment == "server1"
    assert [a.kind.value if a.kind else a.outcome.value for a in first.attempts] == [
        "deployment_broken",
        "success",
    ]
    assert second.deployment == "server2"
    assert third.deployment == "server2"
    assert bad.hits == 1  # forced open: not asked again until its breaker allows


@pytest.mark.parametrize("anyio_backend", [MOCK_CLOCK])
async def test_flapping_primary_fails_over_probes_and_returns() -> None:
    """During a 20 s outage the fallback serves with few attempts on the dead primary; the breaker
    probes, and traffic returns to the primary soon after it recovers."""
    seen: list[Event] = []
    async with (
        FakeSpeechServer(name="primary") as primary,
        FakeSpeechServer(name="fallback") as fallback,
        client_for(
            [primary, fallback],
            breaker=BreakerPolicy(consecutive_failures=3, open_seconds=2, max_open_seconds=8),
            hooks=[seen.append],
        ) as client,
    ):
        primary.set_fault(Fault.flapping(down_seconds=20, fault=Fault.status(503)))
        served: list[tuple[float, str]] = []
        started = anyio.current_time()
        for _ in range(72):  # one request every 0.5 s for 36 s
            speech = await speak(client)
            served.append((anyio.current_time() - started, speech.deployment))
            await anyio.sleep(0.5)
    during = [name for t, name in served if 1 < t < 19]
    # Open time grows 2, 4, 8 s (capped at 8, jitter up to +20%): the primary is probed again
    # at most ~9.6 s after it recovered at 20 s, and serves everything from then on.
    after = [name for t, name in served if t > 30]
    assert set(during) == {"fallback"}
    assert set(after) == {"primary"}
    # Without a breaker the primary would see two attempts per request (about 76 in the outage).
    outage_hits = sum(1 for r in primary.requests if r.time - primary.requests[0].time < 20)
    assert outage_hits < 20
    assert any(isinstance(e, FailedOver) and e.to_deployment == "fallback" for e in seen)


async def test_requests_under_the_same_client_share_breakers_across_backends_cleanly() -> None:
    """A client closed with aclose() releases its connections and refuses further use."""
    from resilient_tts import ClientClosedError

    async with FakeSpeechServer(name="a") as a:
        client = SpeechClient(
            models={"kokoro": [Deployment(name="a", base_url=a.base_url, model="kokoro")]},
            transport="httpx",
        )
        async with client:
            await speak(client)
        with pytest.raises(ClientClosedError):
            await speak(client)
