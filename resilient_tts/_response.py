"""What a request returns: openai's own result objects, plus the story of how the audio was
obtained (`deployment`, `attempts`, `segments`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx2
from openai._legacy_response import HttpxBinaryResponseContent
from openai._response import AsyncStreamedBinaryAPIResponse, StreamedBinaryAPIResponse

from ._core._records import Attempt, SpeechSegment, Synthesized
from ._engine._streaming import SpeechStream
from ._engine._transport import RESULT, STREAM, SYNC_READ_WHOLE

__all__ = ["SpeechResponse", "StreamedSpeechResponse", "SyncStreamedSpeechResponse"]


class SpeechResponse(HttpxBinaryResponseContent):
    """Audio from `client.audio.speech.create(...)`: openai's `HttpxBinaryResponseContent`
    (`content`, `read()`, `write_to_file()`, `iter_bytes()`, `aread()`, ``response``, ...)
    that also tells which deployment answered (`deployment`) and every attempt made on the
    way (`attempts`)."""

    def __init__(self, response: httpx2.Response) -> None:
        super().__init__(response)
        self._result: Synthesized = response.extensions[RESULT]

    def __repr__(self) -> str:
        return (
            f"<SpeechResponse {self.response_format} {len(self._result.content)} bytes "
            f"from {self.deployment!r} after {len(self.attempts)} attempt(s)>"
        )

    @property
    def deployment(self) -> str:
        """The deployment that produced the audio (a long text's first segment's)."""
        return self._result.deployment

    @property
    def attempts(self) -> tuple[Attempt, ...]:
        """Every attempt in order: deployment, outcome, error, elapsed seconds."""
        return self._result.attempts

    @property
    def segments(self) -> tuple[SpeechSegment, ...]:
        """A long text's pieces, in order (a text that fit in one request is one segment)."""
        return self._result.segments

    @property
    def response_format(self) -> str:
        return self._result.response_format

    @property
    def sample_rate(self) -> int:
        return self._result.sample_rate

    @property
    def duration(self) -> float | None:
        """Seconds of audio, when it was decoded (None when passed through untouched)."""
        return self._result.duration


class _StreamStory:
    """`deployment`, `attempts`, `segments` and `bytes_delivered` of a streamed response, read
    from the engine's stream as it goes on."""

    http_response: httpx2.Response

    @property
    def _stream(self) -> SpeechStream:
        stream: SpeechStream = self.http_response.extensions[STREAM]
        return stream

    @property
    def deployment(self) -> str:
        """The deployment speaking (or that spoke) the first segment."""
        return self._stream.deployment

    @property
    def attempts(self) -> tuple[Attempt, ...]:
        """Every finished attempt so far, every segment's, in order. The attempt whose body
        is being read joins the list when its body ends (or fails)."""
        return self._stream.attempts

    @property
    def segments(self) -> tuple[SpeechSegment, ...]:
        return self._stream.segments

    @property
    def bytes_delivered(self) -> int:
        """Bytes of audio the caller has received so far."""
        return self._stream.bytes_delivered

    @property
    def response_format(self) -> str:
        return self._stream.response_format

    @property
    def sample_rate(self) -> int:
        return self._stream.sample_rate

    @property
    def is_closed(self) -> bool:
        return self.http_response.is_closed


class StreamedSpeechResponse(_StreamStory, AsyncStreamedBinaryAPIResponse):
    """Audio from ``client.audio.speech.with_streaming_response.create(...)``, read as it
    comes: openai's `AsyncStreamedBinaryAPIResponse` (``iter_bytes()``, ``read()``,
    ``stream_to_file()``, ``headers``, ``status_code``, ``request_id``, ...).

    The commit point: failover is free until a byte is handed to the caller; after that a
    failure raises `StreamInterruptedError`. `read()` hands nothing over before the end, so
    a body that fails anywhere before it is replaced by the next deployment's, as ``create``.
    """

    async def read(self) -> bytes:
        self._stream.raise_failure()  # a stream that failed stays failed
        if self.http_response.is_stream_consumed:
            return await super().read()  # the bytes already read, or openai's own error
        content = await self._stream.read_whole()
        _mark_read(self.http_response, content)
        return content

    def iter_bytes(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        # Straight from the engine, not through httpx2's re-chunking: a piece is the
        # caller's (the commit point) only when it is handed out here, at the size asked.
        return _Chunks(self.http_response, self._stream, chunk_size)

    def iter_chunks(self) -> AsyncIterator[bytes]:
        """The audio in the pieces it is produced in (``iter_bytes()`` without a size)."""
        return self.iter_bytes()


class _Chunks:
    """`StreamedSpeechResponse.iter_bytes()`: consumes the response as httpx2's own
    ``aiter_bytes()`` would (once, closing it at the end or on error). An iterator object:
    a reader that stops early leaves no async generator to finalize."""

    def __init__(self, response: httpx2.Response, stream: SpeechStream, size: int | None) -> None:
        self._response, self._stream, self._size = response, stream, size
        self._started = False

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        response = self._response
        if not self._started:
            self._started = True
            self._stream.raise_failure()
            if response.is_stream_consumed:
                raise httpx2.StreamConsumed()
            response.is_stream_consumed = True
        try:
            chunk = await self._stream.next_chunk(self._size)
        except BaseException:
            await response.aclose()
            raise
        if chunk is None:
            await response.aclose()
            raise StopAsyncIteration
        return chunk


class SyncStreamedSpeechResponse(_StreamStory, StreamedBinaryAPIResponse):
    """`StreamedSpeechResponse` for `SyncSpeechClient`."""

    def read(self) -> bytes:
        if self.http_response.is_stream_consumed:
            return super().read()
        read_whole = self.http_response.extensions[SYNC_READ_WHOLE]
        content: bytes = read_whole()
        _mark_read(self.http_response, content)
        return content


def _mark_read(response: httpx2.Response, content: bytes) -> None:
    """The body was read around httpx2: tell it so, as its own ``aread()`` would have."""
    response._content = content
    response.is_stream_consumed = True
