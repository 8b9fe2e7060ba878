"""Streaming responses (SPEC §5): audio reaches the caller as a deployment sends it.

    async with client.audio.speech.with_streaming_response.create(...) as response:
        async for chunk in response.iter_bytes():
            play(chunk)

Entering the context runs failover until a deployment has sent its first audio byte. The
body is then normalized on the fly (passed through untouched when it already is the requested
format, rate and mono; else decoded and re-encoded piece by piece, `_audio.StreamDecoder` and
`StreamEncoder`) and handed over chunk by chunk.

The commit point: failover is free until the first byte is handed to the caller, that is,
returned by `iter_bytes` (or `read`, `stream_to_file`); a deployment that stalls, is cut off
or sends something that is not audio before then is replaced by the next one, and the caller
gets complete audio from it. After that, the same failure raises `StreamInterruptedError`,
whose `bytes_delivered` says how much the caller had: never a short clip passed off as whole.

Long text streams its first segment live in the same way. Every later segment is spoken in
full (with its own failover, `_long_text.synthesize_segment`) before any of it is released,
while the caller is still receiving the previous one, so a deployment that dies mid-text
costs only the segment it was speaking and the caller never hears it. All segments go through
one encoder, so the caller receives one continuous file.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from types import TracebackType

import anyio
from anyio.abc import TaskGroup

from .._audio import AudioFormat, BodyCheck, StreamDecoder, StreamEncoder, passthrough
from .._core._classify import FailureKind, Verdict, verdict_for
from .._core._records import Attempt, SpeechSegment, describe_attempts
from .._core._segments import next_segment
from .._exceptions import (
    AllDeploymentsFailedError,
    AudioError,
    DeadlineExceededError,
    StreamInterruptedError,
)
from .._observe import _events as events
from .._observe._events import EventHook, RequestScope
from ._attempt import AttemptError, AudioStream, DeploymentRequest, open_audio_stream
from ._failover import HeldAttempt, run_with_failover
from ._long_text import INLINE_CPU_BYTES, SegmentAudio, SpeechJob, is_long, synthesize_segment
from ._pool import LiveDeployment

__all__ = ["SpeechStreamContext", "StreamedSpeechResponse"]

# PCM handed to the encoder at a time when a buffered segment is released: about 1.4 s at
# 24 kHz, small enough to encode on the event loop and to keep chunks a sensible size.
_RELEASE_BYTES = 64 * 1024
# Closing a connection must not hang the caller's exit, even on a dead peer.
_CLOSE_SECONDS = 1.0


class SpeechStreamContext:
    """What ``with_streaming_response.create(...)`` returns: ``async with`` it to get a
    `StreamedSpeechResponse`; leaving the block closes the connection."""

    def __init__(self, response: StreamedSpeechResponse) -> None:
        self._response = response

    async def __aenter__(self) -> StreamedSpeechResponse:
        await self._response._open()
        return self._response

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._response._release(exc)


class _Opened:
    """What the held attempt returns: a body whose first byte is in, still open, and the
    part of the text it speaks."""

    def __init__(self, stream: AudioStream, exits: AsyncExitStack, start: int, end: int) -> None:
        self.stream = stream
        self.start = start
        self.end = end
        self._exits = exits
        self._chunks: AsyncIterator[bytes] | None = None
        self._first: bytes | None = stream.first_chunk

    async def next_raw(self) -> bytes | None:
        """The next piece of the body, or None at its end; raises `AttemptError`."""
        if self._first is not None:
            first, self._first = self._first, None
            return first
        if self._chunks is None:
            self._chunks = self.stream.chunks()
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            return None

    async def aclose(self) -> None:
        with (
            anyio.CancelScope(shield=True),
            anyio.move_on_after(_CLOSE_SECONDS),
            contextlib.suppress(Exception),  # the body is being dropped; closing is best effort
        ):
            if isinstance(self._chunks, AsyncGenerator):
                await self._chunks.aclose()
            await self._exits.aclose()


@dataclass(eq=False)
class _Live:
    """A deployment's body feeding the stream right now, and how it is being normalized."""

    deployment: LiveDeployment
    held: HeldAttempt
    body: _Opened
    declared: AudioFormat  # what the deployment was asked for
    decoder: StreamDecoder
    head: bytes = b""  # bytes kept until pass-through can be decided
    mode: bool | None = None  # True: pass through, False: decode and re-encode, None: undecided
    check: BodyCheck | None = None
    pcm_bytes: int = 0


class StreamedSpeechResponse:
    """Audio from ``client.audio.speech.with_streaming_response.create(...)``, read as it comes.

    Reads like the openai SDK's `AsyncStreamedBinaryAPIResponse`: ``iter_bytes()``,
    ``read()``, ``stream_to_file()``, ``close()``; also `iter_chunks()` (pieces as they are
    produced). `deployment`, `attempts` and `segments` grow as the stream goes on;
    `bytes_delivered` counts what the caller has received. Read it once.
    """

    def __init__(self, job: SpeechJob, *, hooks: Sequence[EventHook]) -> None:
        self._job = job
        self._hooks = hooks
        self._target = AudioFormat(job.request.response_format)
        self.response_format: str = self._target.value
        self.sample_rate: int = job.rate
        self.bytes_delivered = 0
        self.is_closed = False
        self._segmented = is_long(job.text, job.pool)
        self._attempts: list[Attempt] = []
        self._segments: list[SpeechSegment] = []
        self._failed: set[str] = set()  # deployments whose body failed before the commit point
        self._deadline = 0.0
        self._scope: RequestScope | None = None
        self._group: TaskGroup | None = None
        self._live: _Live | None = None
        self._encoder: StreamEncoder | None = None
        self._queued = memoryview(b"")  # PCM of a buffered segment, released piece by piece
        self._position = 0  # where the next segment starts in the text
        self._previous: LiveDeployment | None = None
        self._next: _Prefetch | None = None
        self._unsent = bytearray()  # produced for `iter_bytes(chunk_size)`, not yet handed over
        self._ended = False
        self._consumed = False
        self._content: bytes | None = None
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        return (
            f"<StreamedSpeechResponse {self.response_format} from {self.deployment!r}, "
            f"{self.bytes_delivered} bytes delivered>"
        )

    @property
    def deployment(self) -> str:
        """The deployment speaking (or that spoke) the first segment."""
        if self._segments:
            return self._segments[0].deployment
        return self._live.deployment.name if self._live is not None else ""

    @property
    def attempts(self) -> tuple[Attempt, ...]:
        """Every finished attempt so far, every segment's, in order. The attempt whose body
        is being read joins the list when its body ends (or fails)."""
        return tuple(self._attempts)

    @property
    def segments(self) -> tuple[SpeechSegment, ...]:
        """The segments spoken so far (a text that fits one request is one segment)."""
        return tuple(self._segments)

    # -- reading --------------------------------------------------------------------------

    def iter_bytes(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
        """The audio as it arrives; with `chunk_size`, in pieces of exactly that many bytes
        (the last one shorter). Raises `StreamInterruptedError` if a deployment fails after
        the first byte was handed over. ``async for chunk in response.iter_bytes():``"""
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self._start_reading()
        return _Chunks(self, chunk_size)

    async def _next_chunk(self, chunk_size: int | None) -> bytes | None:
        """The next piece for the caller, or None at the end."""
        try:
            while True:
                if chunk_size is not None and len(self._unsent) >= chunk_size:
                    piece = bytes(self._unsent[:chunk_size])
                    del self._unsent[:chunk_size]
                    break
                out = await self._next_piece()
                if out is None:
                    if not self._unsent:
                        return None
                    piece = bytes(self._unsent)
                    self._unsent.clear()
                    break
                if chunk_size is not None:
                    self._unsent += out
                elif out:
                    piece = out
                    break
        except BaseException as exc:
            if not isinstance(exc, anyio.get_cancelled_exc_class()):
                self._error = exc
            raise
        # The commit point: returned from here, this byte is the caller's.
        self.bytes_delivered += len(piece)
        return piece

    def iter_chunks(self) -> AsyncIterator[bytes]:
        """The audio in the pieces it is produced in (``iter_bytes()`` without a size)."""
        return self.iter_bytes()

    async def read(self) -> bytes:
        """The whole audio, once it has all arrived.

        Nothing reaches the caller before the end, so the commit point is the end: a body
        that fails at any point before it is replaced by the next deployment's, as with
        `create`. Later calls return the same bytes.
        """
        if self._content is None:
            self._start_reading()
            whole = await self._next_chunk(sys.maxsize)  # one piece: everything, at the end
            self._content = whole or b""
        return self._content

    async def stream_to_file(
        self, file: str | os.PathLike[str], *, chunk_size: int | None = None
    ) -> None:
        """Writes the audio to `file` as it arrives."""
        async with await anyio.Path(file).open(mode="wb") as f:
            async for chunk in self.iter_bytes(chunk_size):
                await f.write(chunk)

    async def write_to_file(self, file: str | os.PathLike[str]) -> None:
        await self.stream_to_file(file)

    async def close(self) -> None:
        """Stops the stream: closes the connection and cancels work on later segments."""
        await self._release(None)

    def _start_reading(self) -> None:
        if self._error is not None:
            raise self._error
        if self._consumed:
            raise RuntimeError(
                "this stream was already read; a StreamedSpeechResponse is read once"
            )
        if self.is_closed:
            raise RuntimeError("this stream is closed")
        self._consumed = True

    # -- the stream -----------------------------------------------------------------------

    async def _open(self) -> None:
        job = self._job
        self._scope = RequestScope(
            self._hooks, pool=job.pool.name, input_chars=len(job.text), streaming=True
        )
        self._scope.__enter__()
        try:
            timeout = job.request.timeout if job.request.timeout is not None else job.pool.deadline
            self._deadline = job.clock() + timeout
            if self._segmented:
                self._group = anyio.create_task_group()
                await self._group.__aenter__()
            await self._open_live(previous_failure=None)
        except BaseException as exc:
            await self._release(exc)
            raise

    async def _open_live(self, previous_failure: Attempt | None) -> None:
        """Failover until a deployment has sent the first byte of the next segment."""
        job = self._job
        remaining = self._deadline - job.clock()
        order = tuple(d for d in job.candidates(self._previous) if d.name not in self._failed)
        if remaining <= 0 or not order:
            raise _gave_up(job, self._attempts, deadline=remaining <= 0)
        start = self._position
        segmented = self._segmented

        async def attempt(deployment: LiveDeployment, sent: DeploymentRequest) -> _Opened:
            if segmented:
                span = next_segment(job.text, start, deployment.config.max_input_chars)
                assert span is not None
            else:
                span = (0, len(job.text))
            request = (
                replace(job.request, input=job.text[span[0] : span[1]])
                if segmented
                else job.request
            )
            client = job.openai_for(deployment)
            opening = open_audio_stream(
                client, deployment.config, request, sent, deployment.timeouts
            )
            exits = AsyncExitStack()  # kept open past this function: the body is read later
            stream = await exits.enter_async_context(opening)
            return _Opened(stream, exits, span[0], span[1])

        # Segments of a long text are asked for losslessly (they are re-encoded anyway).
        request = job.segment_request(job.text) if segmented else job.request
        request = replace(request, timeout=remaining)
        try:
            served = await run_with_failover(
                job.pool, request, attempt, clock=job.clock, candidates=order, hold=True
            )
        except AllDeploymentsFailedError as exc:
            raise _gave_up(
                job,
                [*self._attempts, *exc.attempts],
                deadline=isinstance(exc, DeadlineExceededError),
            ) from exc
        assert served.held is not None
        self._attempts.extend(served.attempts)
        opened = served.value
        if previous_failure is not None:
            job.pool.emit(
                events.FailedOver(
                    pool=job.pool.name,
                    deployment=previous_failure.deployment,
                    to_deployment=served.deployment.name,
                    reason=(previous_failure.kind or FailureKind.SHORT_BODY).value,
                )
            )
        declared = AudioFormat(served.sent.asked_format)
        self._live = _Live(
            deployment=served.deployment,
            held=served.held,
            body=opened,
            declared=declared,
            decoder=StreamDecoder(
                declared=declared, declared_rate=served.deployment.config.sample_rate, rate=job.rate
            ),
            # A long text's segments all go through one encoder: never passed through.
            mode=False if segmented else None,
        )
        self._encoder = StreamEncoder(self._target, job.rate)

    async def _next_piece(self) -> bytes | None:
        """The next output bytes (possibly empty), or None at the end of the stream."""
        while True:
            if self._queued:
                pcm, self._queued = self._queued[:_RELEASE_BYTES], self._queued[_RELEASE_BYTES:]
                return self._encode(bytes(pcm))
            live = self._live
            if live is not None:
                try:
                    return await self._from_live(live)
                except AttemptError as failed:
                    await self._live_failed(live, failed.verdict)
                    continue
            if self._segmented and await self._take_segment():
                continue
            if self._ended:
                return None
            self._ended = True
            return self._finish_encoder()

    async def _from_live(self, live: _Live) -> bytes:
        raw = await live.body.next_raw()
        if raw is None:
            out = await self._cpu(self._finish_live, live, live.head)
            self._live_done(live)
            # Read to its end: closing returns the connection to the pool, and cannot hang.
            await live.body.aclose()
            return out
        return await self._cpu(self._feed_live, live, raw)

    def _feed_live(self, live: _Live, raw: bytes) -> bytes:
        if live.mode is None:
            live.head += raw
            decided = passthrough(
                live.head,
                declared=live.declared,
                declared_rate=live.deployment.config.sample_rate,
                target=self._target,
                rate=self._job.rate,
            )
            if decided is None:
                return b""
            live.mode = decided
            raw, live.head = live.head, b""
            if decided:
                live.check = BodyCheck(raw, declared_rate=live.deployment.config.sample_rate)
        if live.mode:
            assert live.check is not None
            live.check.feed(raw)
            return raw
        try:
            pcm = live.decoder.feed(raw)
        except AudioError as exc:
            raise AttemptError(
                verdict_for(FailureKind.NOT_AUDIO, f"HTTP 200 but not usable audio: {exc}")
            ) from exc
        live.pcm_bytes += len(pcm)
        return self._encode(pcm)

    def _finish_live(self, live: _Live, head: bytes) -> bytes:
        out = b""
        if live.mode is None:  # a body too short to decide on: decode it
            live.mode, live.head = False, b""
            out = self._feed_live(live, head)
        try:
            if live.mode:
                assert live.check is not None
                live.check.check()
            else:
                pcm = live.decoder.finish()
                live.pcm_bytes += len(pcm)
                out += self._encode(pcm)
        except AudioError as exc:
            raise AttemptError(
                verdict_for(FailureKind.SHORT_BODY, f"audio is cut short or broken: {exc}")
            ) from exc
        if not self._segmented:
            self._ended = True  # one body, one file: nothing follows
            if not live.mode:
                out += self._finish_encoder()
        return out

    def _finish_encoder(self) -> bytes:
        encoder, self._encoder = self._encoder, None
        return b"" if encoder is None else encoder.finish()

    def _encode(self, pcm: bytes) -> bytes:
        assert self._encoder is not None
        return self._encoder.feed(pcm)

    async def _cpu(self, work: Callable[[_Live, bytes], bytes], live: _Live, raw: bytes) -> bytes:
        """Normalizing a large piece runs in a worker thread, so it never blocks the loop."""
        if len(raw) <= INLINE_CPU_BYTES:
            return work(live, raw)
        return await anyio.to_thread.run_sync(work, live, raw)

    def _live_done(self, live: _Live) -> None:
        """The live body ended whole: its segment is complete."""
        self._live = None
        self._attempts.append(live.held.succeeded())
        duration = None if live.mode else live.pcm_bytes / 2 / self._job.rate
        start, end = live.body.start, live.body.end
        self._segments.append(
            SpeechSegment(len(self._segments), start, end, live.deployment.name, duration)
        )
        self._previous, self._position = live.deployment, end
        if self._segmented:
            self._prefetch()

    async def _live_failed(self, live: _Live, verdict: Verdict) -> None:
        """Before the commit point: on to the next deployment. After it: the caller's error."""
        self._live = None
        record = live.held.failed(verdict)
        self._attempts.append(record)
        await live.body.aclose()
        if self.bytes_delivered:
            raise StreamInterruptedError(
                f"deployment {live.deployment.name!r} failed after {self.bytes_delivered} bytes "
                f"of audio had reached the caller: {verdict.detail}",
                deployment=live.deployment.name,
                bytes_delivered=self.bytes_delivered,
                attempts=self._attempts,
            )
        # Nothing reached the caller: start over elsewhere, as if this body never was.
        self._failed.add(live.deployment.name)
        self._unsent.clear()
        if self._encoder is not None:
            self._encoder.close()
            self._encoder = None
        await self._open_live(previous_failure=record)

    # -- later segments of a long text ---------------------------------------------------

    def _prefetch(self) -> None:
        """Starts speaking the next segment while the caller receives this one."""
        assert self._group is not None
        slot = _Prefetch()
        self._next = slot
        self._group.start_soon(
            slot.run, self._job, self._position, len(self._segments), self._previous
        )

    async def _take_segment(self) -> bool:
        """Releases the next buffered segment; False when the text is done."""
        slot = self._next
        if slot is None:
            return False
        await slot.done.wait()
        self._next = None
        if slot.error is not None:
            if not self.bytes_delivered:
                raise slot.error
            raise StreamInterruptedError(
                f"a later segment could not be spoken after {self.bytes_delivered} bytes of "
                f"audio had reached the caller: {slot.error}",
                deployment=self._previous.name if self._previous else "",
                bytes_delivered=self.bytes_delivered,
                attempts=[*self._attempts, *getattr(slot.error, "attempts", ())],
            ) from slot.error
        segment = slot.segment
        if segment is None:
            return False
        self._attempts.extend(segment.attempts)
        self._segments.append(segment.describe(len(self._segments), self._job.rate))
        self._previous, self._position = segment.deployment, segment.end
        self._prefetch()
        self._queued = memoryview(segment.pcm)
        return True

    # -- closing --------------------------------------------------------------------------

    async def _release(self, exc: BaseException | None) -> None:
        """Closes everything the stream holds; `exc` is what ended it, if anything did."""
        if self.is_closed:
            return
        self.is_closed = True
        live, self._live = self._live, None
        try:
            if live is not None:
                # The caller stopped reading: never the deployment's failure.
                self._attempts.append(live.held.released())
                await live.body.aclose()
            self._queued = memoryview(b"")
            if self._encoder is not None:
                self._encoder.close()
            group, self._group = self._group, None
            if group is not None:
                group.cancel_scope.cancel()  # later segments being spoken
                await group.__aexit__(None, None, None)
        finally:
            scope, self._scope = self._scope, None
            if scope is not None:
                first = self._segments[0].deployment if self._segments else None
                scope.served(first or (live.deployment.name if live else ""), self.attempts)
                error = exc if exc is not None else self._error
                scope.__exit__(type(error) if error is not None else None, error, None)


class _Chunks:
    """What `iter_bytes` returns: an iterator object rather than an async generator, so a
    caller that breaks out of its loop leaves nothing for the garbage collector to finalize
    (trio warns about abandoned generators); the stream is closed with its context."""

    def __init__(self, response: StreamedSpeechResponse, chunk_size: int | None) -> None:
        self._response = response
        self._chunk_size = chunk_size
        self._done = False

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        piece = await self._response._next_chunk(self._chunk_size)
        if piece is None:
            self._done = True
            raise StopAsyncIteration
        return piece

    async def aclose(self) -> None:
        self._done = True


class _Prefetch:
    """The next segment of a long text, spoken in the background; never raises into the
    task group (which would cancel the caller's block): errors wait here for the reader."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.segment: SegmentAudio | None = None
        self.error: Exception | None = None

    async def run(
        self, job: SpeechJob, start: int, index: int, previous: LiveDeployment | None
    ) -> None:
        try:
            self.segment = await synthesize_segment(job, start, index=index, previous=previous)
        except Exception as exc:
            self.error = exc
        finally:
            self.done.set()


def _gave_up(
    job: SpeechJob, attempts: list[Attempt], *, deadline: bool
) -> AllDeploymentsFailedError:
    """The error for a stream that no deployment could start, telling every attempt made."""
    story = describe_attempts(attempts)
    model = job.request.model
    if deadline:
        return DeadlineExceededError(
            f"deadline reached before any deployment of {model!r} delivered audio: {story}",
            model=model,
            attempts=attempts,
        )
    return AllDeploymentsFailedError(
        f"every deployment of {model!r} failed: {story}", model=model, attempts=attempts
    )
