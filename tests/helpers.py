"""Builds clients pointed at fake servers; shared by the integration tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import trio.testing

from resilient_tts import BreakerPolicy, Deployment, RetryPolicy, SpeechClient
from resilient_tts.testing import FakeSpeechServer

# Time-based tests run on trio's virtual clock: an hour of backoff takes a millisecond.
MOCK_CLOCK = pytest.param(
    ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)}), id="trio-mockclock"
)


def deployments(servers: Sequence[FakeSpeechServer], **overrides: Any) -> list[Deployment]:
    return [
        Deployment(
            name=server.name,
            base_url=server.base_url,
            model=server.model,
            api_key=f"sk-{server.name}-key",
            **overrides,
        )
        for server in servers
    ]


@contextlib.asynccontextmanager
async def client_for(
    servers: Sequence[FakeSpeechServer],
    *,
    model: str = "kokoro",
    breaker: BreakerPolicy | None = None,
    retry: RetryPolicy | None = None,
    deployment_options: dict[str, Any] | None = None,
    hooks: Any = (),
    **settings: Any,
) -> AsyncIterator[SpeechClient]:
    """A client whose pool `model` is `servers`, in order, with quick test timeouts."""
    settings.setdefault("first_byte_timeout", 2.0)
    settings.setdefault("stall_timeout", 1.0)
    settings.setdefault("attempt_timeout", 5.0)
    settings.setdefault("deadline", 10.0)
    settings.setdefault("transport", "auto")  # aiohttp under asyncio, httpx2 under trio
    async with SpeechClient(
        models={model: deployments(servers, **(deployment_options or {}))},
        breaker=breaker,
        retry=retry,
        hooks=hooks,
        **settings,
    ) as client:
        yield client


async def speak(client: SpeechClient, text: str = "Hello there.", **kwargs: Any) -> Any:
    kwargs.setdefault("model", "kokoro")
    kwargs.setdefault("voice", "alloy")
    kwargs.setdefault("response_format", "wav")
    return await client.audio.speech.create(input=text, **kwargs)
