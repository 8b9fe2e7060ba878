"""stream_format="sse": OpenAI's speech events are parsed into audio, wherever chunks split them."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient_tts import AttemptOutcome, FailureKind
from resilient_tts._core._sse import (
    AudioDelta,
    AudioDone,
    ServerSentEvent,
    SpeechStreamError,
    SseParser,
    speech_event,
)
from resilient_tts.testing import FakeSpeechServer, Fault
from tests.helpers import client_for, speak


def _delta(audio: bytes) -> str:
    return json.dumps({"type": "speech.audio.delta", "audio": base64.b64encode(audio).decode()})


def _parse_all(data: bytes, pieces: list[int]) -> list[ServerSentEvent]:
    parser = SseParser()
    events = []
    start = 0
    for end in [*pieces, len(data)]:
        events += parser.feed(data[start:end])
        start = max(start, end)
    return events


def test_events_are_split_on_blank_lines_and_data_lines_join() -> None:
    """A blank line ends an event; its data lines join with newlines; comments are skipped."""
    stream = b": keep-alive\n\nevent: speech\ndata: a\ndata: b\nid: 7\n\ndata:c\n\n"
    assert SseParser().feed(stream) == [
        ServerSentEvent("speech", "a\nb", "7"),
        ServerSentEvent("message", "c", "7"),
    ]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending_is_understood(newline: bytes) -> None:
    """LF, CRLF and bare CR all end lines (WHATWG)."""
    stream = newline.join([b"data: one", b"", b"data: two", b"", b""])
    assert [e.data for e in SseParser().feed(stream)] == ["one", "two"]


def test_an_event_cut_off_by_the_end_of_the_stream_is_not_dispatched() -> None:
    """No blank line after it: the server did not finish sending it."""
    assert SseParser().feed(b"data: whole\n\ndata: partial") == [
        ServerSentEvent("message", "whole")
    ]


def test_an_oversized_event_is_refused() -> None:
    """A runaway event cannot eat the process's memory."""
    parser = SseParser()
    line = b"data: " + b"x" * 1_000_000 + b"\n"
    for _ in range(15):
        parser.feed(line)
    with pytest.raises(ValueError, match="exceeds"):
        parser.feed(line + line)


@settings(max_examples=200, deadline=None)
@given(
    audio=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=12),
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
)
def test_chunk_boundaries_never_change_the_events(
    audio: list[bytes], cuts: list[int], newline: str
) -> None:
    """However the bytes are split (inside CRLF, inside a UTF-8 character), the events match."""
    text = "".join(f"data: {_delta(piece)}{newline}{newline}" for piece in audio)
    data = (text + f": ünïcödé comment{newline}").encode()
    events = _parse_all(data, sorted(cuts))
    decoded = [speech_event(event) for event in events]
    assert decoded == [AudioDelta(piece) for piece in audio]


def test_speech_events_are_told_apart() -> None:
    """Deltas carry base64 audio; done ends; errors and malformed deltas are errors."""
    assert speech_event(ServerSentEvent("message", _delta(b"\x01\x02"))) == AudioDelta(b"\x01\x02")
    done = json.dumps({"type": "speech.audio.done", "usage": {"total_tokens": 3}})
    assert speech_event(ServerSentEvent("message", done)) == AudioDone()
    assert speech_event(ServerSentEvent("speech.audio.done", "{}")) == AudioDone()
    error = json.dumps({"type": "error", "error": {"message": "voice not found"}})
    assert speech_event(ServerSentEvent("message", error)) == SpeechStreamError("voice not found")
    bad = json.dumps({"type": "speech.audio.delta", "audio": "%%%"})
    assert isinstance(speech_event(ServerSentEvent("message", bad)), SpeechStreamError)
    assert isinstance(speech_event(ServerSentEvent("message", "not json")), SpeechStreamError)
    assert speech_event(ServerSentEvent("message", '{"type": "ping"}')) is None


@pytest.mark.anyio
@pytest.mark.parametrize("response_format", ["wav", "mp3", "pcm"])
async def test_sse_answer_is_decoded_to_the_same_audio(response_format: Any) -> None:
    """A server answering text/event-stream gives the same audio as one answering raw bytes."""
    text = "Streaming as events."
    async with (
        FakeSpeechServer(name="sse", chunked=True) as server,
        client_for([server]) as client,
    ):
        speech = await speak(client, text, response_format=response_format, stream_format="sse")
        async with client.audio.speech.with_streaming_response.create(
            model="kokoro",
            voice="alloy",
            input=text,
            response_format=response_format,
            stream_format="sse",
        ) as response:
            streamed = await response.read()
        assert server.requests[0].params["stream_format"] == "sse"
        expected = server.audio(response_format, text)
    assert speech.content == expected
    assert streamed == expected


@pytest.mark.anyio
async def test_sse_stream_cut_before_done_fails_over() -> None:
    """An event stream that ends without speech.audio.done was cut short: next deployment."""
    async with (
        FakeSpeechServer(name="primary", fault=Fault.cut(after_bytes=3000)) as a,
        FakeSpeechServer(name="backup") as b,
        client_for([a, b]) as client,
    ):
        speech = await speak(client, "Hello there.", stream_format="sse")
        expected = b.audio("wav", "Hello there.")
    assert speech.deployment == "backup"
    assert speech.attempts[0].outcome is AttemptOutcome.FAILED
    assert speech.attempts[0].kind is FailureKind.SHORT_BODY
    assert speech.content == expected
