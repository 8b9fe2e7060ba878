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
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from typing import Any

import anyio

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

__all__ = ["SpeechStream", "Spawn"]

# PCM handed to the encoder at a time when a buffered segment is released: about 1.4 s at
# 24 kHz, small enough to encode on the event loop and to keep chunks a sensible size.
_RELEASE_BYTES = 64 * 1024
# Closing a connection must not hang the caller's exit, even on a dead peer.
_CLOSE_SECONDS = 1.0


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


class SpeechStream:
    """One request's audio as it comes: `open()` fails over until a first byte, then
    `next_chunk()` hands out pieces (the commit point), `release()` ends it.

    `deployment`, `attempts` and `segments` grow as the stream goes on; `bytes_delivered`
    counts what the caller has received. The public face is `StreamedSpeechResponse`.
    """

    def __init__(
        self,
        job: SpeechJob,
        *,
        hooks: Sequence[EventHook],
        spawn: Spawn | None = None,
        on_release: Callable[[SpeechStream], None] = lambda stream: None,
    ) -> None:
        self._job = job
        self._hooks = hooks
        # Starts a long text's next segment in a task group the client owns; without one
        # (a client used outside ``async with``) the next segment is spoken when reached.
        self._spawn = spawn
        self._on_release = on_release
        self._target = AudioFormat(job.request.response_format)
        self.response_format: str = self._target.value
        self.sample_rate: int = job.rate
        self.bytes_delivered = 0
        self.is_closed = False
        self._segmented = is_long(job.text, job.pool)
        self._attempts: list[Attempt] = []
        self._segments: list[SpeechSegment] = []
        self._failed: set[str] = set()  # deployments whose body failed before the commit point
        self._scope: RequestScope | None = None
        self._live: _Live | None = None
        self._encoder: StreamEncoder | None = None
        self._queued = memoryview(b"")  # PCM of a buffered segment, released piece by piece
        self._position = 0  # where the next segment starts in the text
        self._previous: LiveDeployment | None = None
        self._next: _Prefetch | None = None
        self._unsent = bytearray()  # produced for `iter_bytes(chunk_size)`, not yet handed over
        self._ended = False
        self._error: BaseException | None = None
        self.request_id: str | None = None  # the first deployment's x-request-id

    def __repr__(self) -> str:
        return (
            f"<SpeechStream {self.response_format} from {self.deployment!r}, "
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

    # -- reading ---------------------------------------------------------------------------

    async def next_chunk(self, chunk_size: int | None) -> bytes | None:
        """The next piece for the caller (exactly `chunk_size` bytes when given, but the
        last), or None at the end. Raises `StreamInterruptedError` after the commit point."""
        self.raise_failure()
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

    def raise_failure(self) -> None:
        """Raises what ended the stream, again: a stream that failed stays failed."""
        if self._error is not None:
            raise self._error

    async def read_whole(self) -> bytes:
        """The whole audio, once it has all arrived. Nothing reaches the caller before the
        end, so the commit point is the end: a body that fails anywhere before it is replaced
        by the next deployment's, as with ``create``."""
        whole = await self.next_chunk(sys.maxsize)  # one piece: everything, at the end
        return whole or b""

    # -- the stream -----------------------------------------------------------------------

    async def open(self) -> None:
        """Fails over until a deployment has sent its first audio byte; raises the story
        (`AllDeploymentsFailedError`) when none does, and then the stream is released."""
        job = self._job
        self._scope = RequestScope(
            self._hooks, pool=job.pool.name, input_chars=len(job.text), streaming=True
        )
        self._scope.__enter__()
        try:
            await self._open_live(previous_failure=None)
            assert self._live is not None
            self.request_id = self._live.body.stream.request_id
        except BaseException as exc:
            await self.release(exc)
            raise

    async def _open_live(self, previous_failure: Attempt | None) -> None:
        """Failover until a deployment has sent the first byte of the next segment."""
        job = self._job
        remaining = job.deadline - job.clock()
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
            opening = open_audio_stream(
                job.http(), deployment.endpoint, request, sent, deployment.timeouts
            )
            exits = AsyncExitStack()  # kept open past this function: the body is read later
            stream = await exits.enter_async_context(opening)
            return _Opened(stream, exits, span[0], span[1])

        # Segments of a long text are asked for losslessly (they are re-encoded anyway).
        request = job.segment_request(job.text) if segmented else job.request
        try:
            served = await run_with_failover(
                job.pool,
                request,
                attempt,
                clock=job.clock,
                candidates=order,
                hold=True,
                deadline=job.deadline,
                deposit=previous_failure is None and not self._segments,
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
        """Starts speaking the next segment while the caller receives this one (in the
        client's own task group), or readies it to be spoken when the reader reaches it."""
        slot = _Prefetch(self._job, self._position, len(self._segments), self._previous)
        self._next = slot
        if self._spawn is not None:
            self._spawn(slot.run)

    async def _take_segment(self) -> bool:
        """Releases the next buffered segment; False when the text is done."""
        slot = self._next
        if slot is None:
            return False
        if self._spawn is None:
            await slot.run()
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

    async def release(self, exc: BaseException | None) -> None:
        """Closes everything the stream holds; `exc` is what ended it, if anything did.
        Safe from any task: it only signals the next segment's work to stop."""
        if self.is_closed:
            return
        self.is_closed = True
        self._on_release(self)
        live, self._live = self._live, None
        try:
            if live is not None:
                # The caller stopped reading: never the deployment's failure.
                self._attempts.append(live.held.released())
                await live.body.aclose()
            self._queued = memoryview(b"")
            if self._encoder is not None:
                self._encoder.close()
            slot, self._next = self._next, None
            if slot is not None:
                slot.cancel()  # the next segment being spoken
        finally:
            scope, self._scope = self._scope, None
            if scope is not None:
                first = self._segments[0].deployment if self._segments else None
                scope.served(first or (live.deployment.name if live else ""), self.attempts)
                error = exc if exc is not None else self._error
                scope.__exit__(type(error) if error is not None else None, error, None)


Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], object]


class _Prefetch:
    """The next segment of a long text, spoken once by `run` (in the background or when the
    reader reaches it); never raises into a task group (which would cancel its owner):
    errors wait here for the reader."""

    def __init__(
        self, job: SpeechJob, start: int, index: int, previous: LiveDeployment | None
    ) -> None:
        self._job, self._start, self._index, self._previous = job, start, index, previous
        self._scope = anyio.CancelScope()
        self._started = False
        self.done = anyio.Event()
        self.segment: SegmentAudio | None = None
        self.error: Exception | None = None

    async def run(self) -> None:
        if self._started:
            return
        self._started = True
        try:
            with self._scope:
                self.segment = await synthesize_segment(
                    self._job, self._start, index=self._index, previous=self._previous
                )
        except Exception as exc:
            self.error = exc
        finally:
            self.done.set()

    def cancel(self) -> None:
        self._scope.cancel()


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
