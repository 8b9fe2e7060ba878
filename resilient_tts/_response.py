"""What a request returns: the audio and the story of how it was obtained."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import anyio

from ._core._records import Attempt, SpeechSegment, Synthesized

__all__ = ["SpeechResponse"]


class SpeechResponse:
    """Audio from `client.audio.speech.create(...)`.

    It reads like the openai SDK's `HttpxBinaryResponseContent` (`content`, `read()`,
    `write_to_file()`, `iter_bytes()`, `aread()`, ...), and also tells which deployment
    answered (`deployment`) and every attempt made on the way (`attempts`).
    """

    def __init__(
        self,
        content: bytes,
        *,
        deployment: str,
        attempts: tuple[Attempt, ...],
        response_format: str,
        sample_rate: int,
        duration: float | None = None,
        segments: tuple[SpeechSegment, ...] = (),
    ) -> None:
        self._content = content
        self.deployment = deployment
        self.attempts = attempts
        self.response_format = response_format
        self.sample_rate = sample_rate
        self.duration = duration
        # A long text's pieces (SPEC §5), in order; `deployment` is the first one's.
        self.segments = segments

    @classmethod
    def of(cls, result: Synthesized) -> SpeechResponse:
        return cls(
            result.content,
            deployment=result.deployment,
            attempts=result.attempts,
            response_format=result.response_format,
            sample_rate=result.sample_rate,
            duration=result.duration,
            segments=result.segments,
        )

    def __repr__(self) -> str:
        return (
            f"<SpeechResponse {self.response_format} {len(self._content)} bytes "
            f"from {self.deployment!r} after {len(self.attempts)} attempt(s)>"
        )

    @property
    def content(self) -> bytes:
        return self._content

    def read(self) -> bytes:
        return self._content

    async def aread(self) -> bytes:
        return self._content

    def iter_bytes(self, chunk_size: int | None = None) -> Iterator[bytes]:
        size = chunk_size or len(self._content) or 1
        view = memoryview(self._content)
        for start in range(0, len(view), size):
            yield bytes(view[start : start + size])

    async def aiter_bytes(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        # Awaited then iterated, as in the openai SDK: `async for c in await r.aiter_bytes()`.
        return _async_iter(self.iter_bytes(chunk_size))

    def write_to_file(self, file: str | os.PathLike[str]) -> None:
        with open(file, mode="wb") as f:
            f.write(self._content)

    def stream_to_file(
        self, file: str | os.PathLike[str], *, chunk_size: int | None = None
    ) -> None:
        self.write_to_file(file)

    async def astream_to_file(
        self, file: str | os.PathLike[str], *, chunk_size: int | None = None
    ) -> None:
        await anyio.Path(file).write_bytes(self._content)

    def close(self) -> None:
        """Nothing to release: the connection went back to the pool when the body was read."""

    async def aclose(self) -> None:
        """Nothing to release: the connection went back to the pool when the body was read."""


async def _async_iter(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
