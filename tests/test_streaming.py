"""SPEC §5 streaming over real loopback sockets: bytes as they come, and the commit point."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from resilient_tts import (
    AllDeploymentsFailedError,
    AttemptOutcome,
    Event,
    RequestFinished,
    RequestStarted,
    SpeechClient,
    StreamedSpeechResponse,
    StreamInterruptedError,
)
from resilient_tts._audio import AudioFormat
from resilient_tts.testing import FakeSpeechServer, Fault
from tests.audio.audio_support import judge, opus_input_rate
from tests.helpers import MOCK_CLOCK, client_for

pytestmark = pytest.mark.anyio

TEXT = "Streaming speech arrives as it is made."  # 0.39 s of tone at 0.01 s per character


def stream(client: SpeechClient, text: str = TEXT, **kwargs: Any) -> Any:
    kwargs.setdefault("model", "kokoro")
    kwargs.setdefault("voice", "alloy")
    kwargs.setdefault("response_format", "wav")
    return client.audio.speech.with_streaming_response.create(input=text, **kwargs)


def kinds(response: Any) -> list[str]:
    return [
        f"{a.deployment}:{a.kind.value if a.kind else a.outcome.value}" for a in response.attempts
    ]


@contextlib.asynccontextmanager
async def two_servers(
    primary: Fault, **options: Any
) -> AsyncIterator[tuple[FakeSpeechServer, FakeSpeechServer]]:
    async with (
        FakeSpeechServer(name="primary", fault=primary, chunked=True, **options) as a,
        FakeSpeechServer(name="backup", chunked=True, **options) as b,
    ):
        yield a, b


@pytest.mark.parametrize("fmt", ["pcm", "wav", "mp3", "opus", "aac", "flac"])
async def test_matching_format_is_passed_through_byte_for_byte(fmt: str) -> None:
    """A deployment that already sends the requested format, rate and mono: its bytes, as sent."""
    async with (
        FakeSpeechServer(name="gpu", chunked=True) as server,
        client_for([server]) as client,
        stream(client, response_format=fmt) as response,
    ):
        assert isinstance(response, StreamedSpeechResponse)
        chunks = [chunk async for chunk in response.iter_bytes()]
        expected = server.audio(fmt, TEXT)
    assert b"".join(chunks) == expected
    assert len(chunks) > 1  # several pieces, as the server sent them
    assert response.deployment == "gpu"
    assert response.bytes_delivered == len(expected)
    assert [a.outcome for a in response.attempts] == [AttemptOutcome.SUCCESS]
    assert [(s.start, s.end, s.deployment) for s in response.segments] == [(0, len(TEXT), "gpu")]


@pytest.mark.parametrize("fmt", ["pcm", "wav", "mp3", "opus", "aac", "flac"])
async def test_other_formats_and_rates_are_converted_on_the_fly(fmt: str) -> None:
    """A deployment that only makes 22.05 kHz WAV: every format comes out right, as it streams."""
    async with (
        FakeSpeechServer(name="piper", formats=["wav"], sample_rate=22050, chunked=True) as server,
        client_for(
            [server], deployment_options={"formats": ["wav"], "sample_rate": 22050}
        ) as client,
        stream(client, response_format=fmt) as response,
    ):
        data = await response.read()
    judged = judge(data, AudioFormat(fmt), 24000)  # by Debian's ffprobe
    assert judged.codec == {"pcm": "pcm_s16le", "wav": "pcm_s16le"}.get(fmt, fmt)
    assert judged.channels == 1
    if fmt == "opus":  # decoded at 48 kHz always; the file records the rate it was made at
        assert (judged.sample_rate, opus_input_rate(data)) == (48000, 24000)
    else:
        assert judged.sample_rate == 24000
    expected = len(TEXT) * 0.01
    # Streamed mp3 and ADTS aac carry their encoder's priming and padding (no seekable header
    # to record it in, as in any streamed file): at most two codec frames more.
    slack = 2 * 1152 / 24000 if fmt == "mp3" else 2 * 1024 / 24000 if fmt == "aac" else 1e-4
    assert expected - 1e-4 <= judged.duration <= expected + slack
    if fmt == "wav":
        assert data[4:8] == b"\xff\xff\xff\xff"  # a streaming header: the length was unknown
    assert response.segments[0].duration == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("anyio_backend", [MOCK_CLOCK])
async def test_first_bytes_reach_the_caller_before_the_body_ends() -> None:
    """What the deployment has sent is the caller's at once, not when the clip is complete."""
    async with (
        FakeSpeechServer(name="slow", fault=Fault.stall(after_bytes=6000, seconds=4)) as server,
        client_for([server], stall_timeout=10) as client,
    ):
        started = anyio.current_time()
        arrivals = []
        async with stream(client) as response:
            async for chunk in response.iter_bytes():
                arrivals.append((anyio.current_time() - started, len(chunk)))
    assert arrivals[0][0] < 0.5
    assert sum(size for when, size in arrivals if when < 1) >= 6000
    assert arrivals[-1][0] >= 4


@pytest.mark.parametrize("anyio_backend", [MOCK_CLOCK])
async def test_slow_first_byte_is_served_by_the_next_deployment_within_the_timeout() -> None:
    """No first byte within the first-byte timeout: the next deployment serves the stream."""
    async with (
        two_servers(Fault.slow_first_byte(30)) as (a, b),
        client_for([a, b], first_byte_timeout=2) as client,
    ):
        started = anyio.current_time()
        async with stream(client) as response:
            entered = anyio.current_time() - started
            data = await response.read()
        expected = b.audio("wav", TEXT)
    assert 2 <= entered < 3
    assert data == expected
    assert kinds(response) == ["primary:first_byte_timeout", "backup:success"]


@pytest.mark.parametrize("anyio_backend", [MOCK_CLOCK])
async def test_stall_before_any_byte_reached_the_caller_fails_over_with_complete_audio() -> None:
    """The primary stalls after sending part of its body; nothing was handed over yet, so the
    backup's complete audio is what the caller gets, and nothing of the primary's."""
    async with (
        two_servers(Fault.stall(after_bytes=6000)) as (a, b),
        client_for([a, b], stall_timeout=1) as client,
        stream(client) as response,
    ):
        # One big piece: the primary's first 6000 bytes were produced but never handed over.
        pieces = [piece async for piece in response.iter_bytes(chunk_size=10**7)]
        expected = b.audio("wav", TEXT)
    assert pieces == [expected]
    assert kinds(response) == ["primary:stall", "backup:success"]


async def test_cut_before_any_byte_reached_the_caller_fails_over_with_complete_audio() -> None:
    """A body cut short (Content-Length not reached) before the caller read: next deployment."""
    async with (
        FakeSpeechServer(name="primary", fault=Fault.cut(after_bytes=500)) as a,
        FakeSpeechServer(name="backup") as b,
        client_for([a, b]) as client,
        stream(client, response_format="mp3") as response,
    ):
        data = await response.read()
        expected = b.audio("mp3", TEXT)
    assert data == expected
    assert kinds(response) == ["primary:short_body", "backup:success"]


async def test_cut_after_bytes_reached_the_caller_raises_stream_interrupted() -> None:
    """After the commit point a cut is the caller's error, with the bytes it got; no splice."""
    received = 0

    async def read(response: StreamedSpeechResponse) -> None:
        nonlocal received
        async for chunk in response.iter_bytes():
            received += len(chunk)

    async with (
        two_servers(Fault.cut(after_bytes=20_000), seconds_per_char=0.05) as (a, b),
        client_for([a, b]) as client,
    ):
        async with stream(client) as response:
            with pytest.raises(StreamInterruptedError) as caught:
                await read(response)
        hits = b.hits
    error = caught.value
    assert 0 < received == error.bytes_delivered == response.bytes_delivered <= 20_000
    assert error.deployment == "primary"
    assert [a.kind.value if a.kind else a.outcome.value for a in error.attempts] == ["short_body"]
    assert hits == 0  # no failover once audio reached the caller
    with pytest.raises(StreamInterruptedError):  # and the stream stays failed
        await response.read()


async def test_read_hands_over_nothing_before_the_end_so_a_late_cut_still_fails_over() -> None:
    """read() returns only the whole audio: its commit point is the end of the body."""
    async with (
        two_servers(Fault.cut(after_bytes=20_000), seconds_per_char=0.05) as (a, b),
        client_for([a, b]) as client,
        stream(client) as response,
    ):
        data = await response.read()
        expected = b.audio("wav", TEXT)
    assert data == expected
    assert kinds(response) == ["primary:short_body", "backup:success"]
    assert response.bytes_delivered == len(expected)


async def test_no_deployment_delivering_raises_when_the_stream_is_entered() -> None:
    """Every deployment fails before its first byte: entering raises, with every attempt."""
    async with (
        FakeSpeechServer(name="a", fault=Fault.status(401)) as a,
        FakeSpeechServer(name="b", fault=Fault.not_audio("html")) as b,
        client_for([a, b]) as client,
    ):
        with pytest.raises(AllDeploymentsFailedError) as caught:
            async with stream(client):
                pytest.fail("entered a stream that has no audio")
    assert [x.deployment for x in caught.value.attempts] == ["a", "b"]


async def test_stream_to_file_and_chunk_sizes(tmp_path: Any) -> None:
    """stream_to_file writes what iter_bytes gives; chunk_size gives exact pieces."""
    async with FakeSpeechServer(name="gpu", chunked=True) as server, client_for([server]) as client:
        async with stream(client, response_format="pcm") as response:
            pieces = [piece async for piece in response.iter_bytes(chunk_size=1000)]
        async with stream(client, response_format="pcm") as response:
            path = anyio.Path(tmp_path / "stream.pcm")
            await response.stream_to_file(path)
        expected = server.audio("pcm", TEXT)
    written = await path.read_bytes()
    assert b"".join(pieces) == written == expected
    assert {len(piece) for piece in pieces[:-1]} == {1000}
    with pytest.raises(RuntimeError, match="already been streamed"):
        [chunk async for chunk in response.iter_bytes()]


async def test_stream_is_one_request_for_hooks() -> None:
    """Hooks see one streaming request, finished when the stream is closed."""
    seen: list[Event] = []
    async with (
        FakeSpeechServer(name="gpu") as server,
        client_for([server], hooks=[seen.append]) as client,
        stream(client) as response,
    ):
        await response.read()
    started = [e for e in seen if isinstance(e, RequestStarted)]
    finished = [e for e in seen if isinstance(e, RequestFinished)]
    assert [e.streaming for e in started] == [True]
    assert [(e.deployment, e.ok) for e in finished] == [("gpu", True)]
    assert {e.request_id for e in seen} == {started[0].request_id}


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _connections_closed(server: FakeSpeechServer) -> None:
    """Waits until the server has seen every client connection go (it notices a close only
    when its connection task next runs)."""
    with anyio.fail_after(5):
        while server.open_connections:  # noqa: ASYNC110 - the server's state, seen from outside
            await anyio.sleep(0.01)


@pytest.mark.parametrize("text", [TEXT, "A long text. " * 40], ids=["one-segment", "long-text"])
async def test_leaving_a_stream_midway_closes_the_connection_and_leaves_nothing(
    text: str,
) -> None:
    """Stopping after the first chunk closes the connection (the server sees it go) and
    leaves no task and no socket behind, also while later segments were being prepared."""
    async with FakeSpeechServer(
        name="gpu", fault=Fault.stall(after_bytes=5000), chunked=True, max_input_chars=None
    ) as server:
        fds, tasks = _open_fds(), len(anyio.get_running_tasks())
        async with client_for(
            [server], deployment_options={"max_input_chars": 100}, stall_timeout=30
        ) as client:
            async with stream(client, text) as response:
                async for _chunk in response.iter_bytes():
                    break
            await _connections_closed(server)
            assert len(anyio.get_running_tasks()) == tasks
        assert _open_fds() == fds
    assert response.is_closed


async def test_cancelling_the_reader_releases_the_deployment() -> None:
    """A reader cancelled midway is not a deployment failure: its breaker is untouched."""
    async with (
        FakeSpeechServer(name="gpu", fault=Fault.stall(after_bytes=5000), chunked=True) as server,
        client_for([server], stall_timeout=30) as client,
    ):
        with anyio.move_on_after(0.5):
            async with stream(client) as response:
                async for _chunk in response.iter_bytes():
                    pass
        await _connections_closed(server)
        breaker = client._live_pools()["kokoro"].deployments[0].breaker
        assert breaker.snapshot().consecutive_failures == 0
    assert [a.outcome for a in response.attempts] == [AttemptOutcome.CANCELLED]
