"""One attempt at one deployment: send the request, watch the clock, check what comes back.

The attempt opens the response as a stream, so it can tell the first byte from the headers
and notice a body that stalls, instead of waiting for a whole clip behind one timeout. Every
failure leaves as an `AttemptError` carrying its `Verdict`, the original error chained.

A server that answers ``text/event-stream`` (OpenAI with ``stream_format="sse"``) has its
``speech.audio.delta`` events decoded here, so everything downstream sees plain audio bytes; a
stream that ends without ``speech.audio.done`` was cut short.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any

import anyio
import httpx2

from .._audio import LOSSLESS_PREFERENCE
from .._config._request import SpeechRequest
from .._config._values import Deployment, ResponseFormat, Timeouts
from .._core._classify import (
    FailureKind,
    Verdict,
    classify_exception,
    classify_status,
    error_message,
    redact,
    verdict_for,
)
from .._core._sse import AudioDelta, AudioDone, SpeechStreamError, SseParser, speech_event
from ._http import request_headers, speech_url

__all__ = [
    "AttemptError",
    "AudioStream",
    "DeploymentRequest",
    "Endpoint",
    "adapt_request",
    "first_byte_at",
    "on_first_byte",
    "open_audio_stream",
]

# An error body is read up to this many bytes: enough for any real message.
_ERROR_BODY_LIMIT = 8192
_TEXT_TYPES = ("application/json", "text/", "application/problem+json", "application/xml")
# When this task's attempt received its first body byte (anyio clock): the failover loop reads
# it for first-byte latency without the attempt function having to return it.
first_byte_at: ContextVar[float | None] = ContextVar("resilient_tts_first_byte_at", default=None)
# Called when this task's attempt receives its first audio byte: a hedged race learns from it
# which deployment answered first (`_hedge.race` sets it in each contestant's task).
on_first_byte: ContextVar[Callable[[], None] | None] = ContextVar(
    "resilient_tts_on_first_byte", default=None
)
_EVENT_STREAM = "text/event-stream"
# Chunks already buffered come out of a cancelled read without a checkpoint; beyond this many
# the rest of the body is left to aclose().
_MAX_DRAIN_READS = 64


class AttemptError(Exception):
    """Internal: an attempt failed; `verdict` says what it means for failover."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.detail)
        self.verdict = verdict


@dataclass(frozen=True, slots=True)
class DeploymentRequest:
    """The request as this deployment will see it, and what was changed to fit it."""

    voice: str
    asked_format: ResponseFormat
    speed: float | None
    instructions: str | None
    adaptations: tuple[str, ...]


def adapt_request(deployment: Deployment, request: SpeechRequest) -> DeploymentRequest:
    """Maps the voice, picks the format to ask for, drops parameters the deployment ignores."""
    adaptations: list[str] = []
    voice = deployment.voices.get(request.voice, request.voice)
    if voice != request.voice:
        adaptations.append(f"voice {request.voice!r} -> {voice!r}")
    asked = request.response_format
    if asked not in deployment.formats:
        # The best lossless format it declares (the audio layer's order), else its first.
        lossless = (f.value for f in LOSSLESS_PREFERENCE)
        asked = next((f for f in lossless if f in deployment.formats), deployment.formats[0])
        adaptations.append(f"asked for {asked}, to be converted to {request.response_format}")
    speed, instructions = request.speed, request.instructions
    if speed is not None and not deployment.accepts_speed:
        speed = None
        adaptations.append("speed dropped: the deployment does not accept it")
    if instructions is not None and not deployment.accepts_instructions:
        instructions = None
        adaptations.append("instructions dropped: the deployment does not accept them")
    return DeploymentRequest(voice, asked, speed, instructions, tuple(adaptations))


class AudioStream:
    """The body of a 200 response, chunk by chunk, each chunk within the stall timeout."""

    def __init__(
        self,
        first_chunk: bytes,
        rest: AsyncIterator[bytes],
        *,
        content_type: str,
        content_length: int | None,
        stall_timeout: float,
        request_id: str | None = None,
    ) -> None:
        self.first_chunk = first_chunk
        self.content_type = content_type
        self.request_id = request_id
        self._rest = rest
        self._content_length = content_length
        self._stall_timeout = stall_timeout
        self.received = len(first_chunk)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The rest of the body after `first_chunk`; raises `AttemptError` on stall or cut."""
        while True:
            with anyio.move_on_after(self._stall_timeout) as stall:
                try:
                    chunk = await self._rest.__anext__()
                except StopAsyncIteration:
                    break
                except AttemptError:
                    raise
                except Exception as exc:  # any HTTP library's error mid-body: cut short
                    raise AttemptError(classify_exception(exc, headers_received=True)) from exc
            if stall.cancelled_caught:
                raise AttemptError(
                    verdict_for(
                        FailureKind.STALL,
                        f"no data for {self._stall_timeout:g}s after {self.received} bytes",
                    )
                )
            self.received += len(chunk)
            yield chunk
        self._check_length()

    async def read_all(self) -> bytes:
        """The whole body. Same checks as `chunks`, with one cancel scope whose deadline moves
        with each chunk instead of one scope per chunk: this is every request's hot path."""
        parts = [self.first_chunk]
        with anyio.CancelScope() as stall:
            while True:
                stall.deadline = anyio.current_time() + self._stall_timeout
                try:
                    chunk = await self._rest.__anext__()
                except StopAsyncIteration:
                    break
                except AttemptError:
                    raise
                except Exception as exc:  # any HTTP library's error mid-body: cut short
                    raise AttemptError(classify_exception(exc, headers_received=True)) from exc
                self.received += len(chunk)
                parts.append(chunk)
        if stall.cancelled_caught:
            raise AttemptError(
                verdict_for(
                    FailureKind.STALL,
                    f"no data for {self._stall_timeout:g}s after {self.received} bytes",
                )
            )
        self._check_length()
        return b"".join(parts)

    def _check_length(self) -> None:
        if self._content_length is not None and self.received < self._content_length:
            raise AttemptError(
                verdict_for(
                    FailureKind.SHORT_BODY,
                    f"body ended after {self.received} of {self._content_length} bytes",
                )
            )


@asynccontextmanager
async def open_audio_stream(
    http: httpx2.AsyncClient,
    endpoint: Endpoint,
    request: SpeechRequest,
    sent: DeploymentRequest,
    timeouts: Timeouts,
) -> AsyncIterator[AudioStream]:
    """Sends the request and yields once the first body byte is in, within the first-byte
    timeout.

    The caller bounds the whole attempt (attempt timeout and deadline) with its own scope.
    Any exception from the HTTP client (httpx2's, aiohttp's through openai's adapter, or one
    nobody expected) is this deployment's failure, as an `AttemptError`.
    """
    deployment = endpoint.config
    secrets = endpoint.secrets
    http_request = http.build_request(
        "POST",
        endpoint.url,
        content=json.dumps(_body(deployment, request, sent)).encode(),
        headers={**endpoint.headers, **request.extra_headers}
        if request.extra_headers
        else endpoint.headers,
    )
    response: httpx2.Response | None = None
    # Body iterators are closed explicitly on every way out: an abandoned async generator
    # would otherwise be finalized by the garbage collector (trio warns), and closing httpx2's
    # own iterator is what closes the connection of a body read only in part.
    raw: Any = None
    body: Any = None
    with anyio.move_on_after(timeouts.first_byte) as first_byte:
        try:
            response = await http.send(http_request, stream=True)
        except Exception as exc:
            raise AttemptError(
                _redacted(classify_exception(exc, headers_received=False), secrets)
            ) from exc
        try:
            if response.status_code >= 300:
                raise AttemptError(await _status_verdict(response, secrets))
            content_type = response.headers.get("content-type", "").lower()
            sse = content_type.startswith(_EVENT_STREAM)
            raw = response.aiter_bytes()
            body = _sse_audio(raw, secrets) if sse else raw
            try:
                first_chunk = await body.__anext__()
                first_byte_at.set(anyio.current_time())
                notify = on_first_byte.get()
                if notify is not None:
                    notify()
            except StopAsyncIteration:
                first_chunk = b""
            except AttemptError:
                raise
            except Exception as exc:
                raise AttemptError(
                    _redacted(classify_exception(exc, headers_received=True), secrets)
                ) from exc
        except BaseException:
            await _close_quietly(response, body, raw)
            raise
    if first_byte.cancelled_caught:
        if response is not None:
            await _close_quietly(response, body, raw)
        raise AttemptError(
            verdict_for(FailureKind.FIRST_BYTE_TIMEOUT, f"no audio within {timeouts.first_byte:g}s")
        )
    assert response is not None
    try:
        textual = content_type.startswith(_TEXT_TYPES) and not sse
        if not first_chunk or textual or first_chunk[:1] in (b"{", b"<", b"["):
            rest = first_chunk + b"".join([chunk async for chunk in _limited(body, 4096)])
            message = redact(error_message(rest), secrets) or "empty body"
            raise AttemptError(
                verdict_for(
                    FailureKind.NOT_AUDIO,
                    f"HTTP 200 but not audio ({content_type or 'no content type'}): {message}",
                )
            )
        length = response.headers.get("content-length")
        encoded = response.headers.get("content-encoding", "identity") != "identity"
        yield AudioStream(
            first_chunk,
            body,
            content_type=content_type,
            # An event stream's length counts events, not the audio they carry.
            content_length=int(length)
            if length and length.isdigit() and not (encoded or sse)
            else None,
            stall_timeout=timeouts.stall,
            request_id=response.headers.get("x-request-id"),
        )
    except BaseException:
        await _close_quietly(response, body, raw)
        raise
    # Body read to the end: closing returns the connection to the pool and cannot hang.
    await _close_iterators(body, raw)
    await response.aclose()


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to call one deployment: computed once per deployment."""

    config: Deployment
    url: str
    headers: Mapping[str, str]
    secrets: tuple[str, ...]

    @classmethod
    def of(cls, deployment: Deployment) -> Endpoint:
        key = deployment.api_key.get_secret_value() if deployment.api_key else ""
        return cls(
            deployment, speech_url(deployment), request_headers(deployment), (key,) if key else ()
        )


def _body(
    deployment: Deployment, request: SpeechRequest, sent: DeploymentRequest
) -> dict[str, Any]:
    body: dict[str, Any] = dict(request.extra_body) if request.extra_body else {}
    body.update(
        model=deployment.model,
        voice=sent.voice,
        input=request.input,
        response_format=sent.asked_format,
    )
    if sent.speed is not None:
        body["speed"] = sent.speed
    if sent.instructions is not None:
        body["instructions"] = sent.instructions
    if request.stream_format is not None:
        body["stream_format"] = request.stream_format
    return body


async def _sse_audio(
    events: AsyncIterator[bytes], secrets: tuple[str, ...]
) -> AsyncIterator[bytes]:
    """The audio bytes carried by an event stream's ``speech.audio.delta`` events."""
    parser = SseParser()
    async for chunk in events:
        try:
            parsed = parser.feed(chunk)
        except ValueError as exc:
            raise AttemptError(verdict_for(FailureKind.NOT_AUDIO, f"event stream: {exc}")) from exc
        for event in parsed:
            match speech_event(event):
                case AudioDelta(audio=audio) if audio:
                    yield audio
                case AudioDone():
                    return
                case SpeechStreamError(message=message):
                    # speaches fails a bad voice or speed after its 200 was sent (SPEC §6).
                    reported = redact(message, secrets)
                    detail = f"HTTP 200 but the event stream reported an error: {reported}"
                    raise AttemptError(verdict_for(FailureKind.NOT_AUDIO, detail))
    raise AttemptError(
        verdict_for(FailureKind.SHORT_BODY, "event stream ended without speech.audio.done")
    )


async def _limited(body: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    received = 0
    with anyio.move_on_after(1.0):  # an error page is small; do not wait on a slow one
        async for chunk in body:
            yield chunk
            received += len(chunk)
            if received >= limit:
                return


async def _close_iterators(*iterators: Any) -> None:
    """Ends body iterators left mid-body, outermost first (finished ones are left alone).

    ``aclose()`` alone is not enough: httpx2's transport iterates httpcore2's stream with a
    plain ``async for``, so closing the outer generator orphans the inner one, which trio then
    finalizes with a ResourceWarning. A read in an already-cancelled scope instead ends every
    generator of the chain with the cancellation (after any chunks already buffered); the
    connection is closed, not reused, as for any body read in part.
    """
    for iterator in iterators:
        # A finished async generator has no frame left: nothing to end, and a cancelled read
        # costs a task cancellation on asyncio; this is every whole-body read's way out.
        if iterator is None or getattr(iterator, "ag_frame", True) is None:
            continue
        with anyio.CancelScope() as drain:
            drain.cancel()
            for _ in range(_MAX_DRAIN_READS):
                try:
                    await iterator.__anext__()
                except Exception:  # StopAsyncIteration, or the error it ended with
                    break
        await iterator.aclose()


async def _close_quietly(response: httpx2.Response | None, *iterators: Any) -> None:
    with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
        try:
            await _close_iterators(*iterators)
            if response is not None:
                await response.aclose()
        except Exception:  # noqa: S110 - the attempt already failed or finished; closing is best effort
            pass


async def _status_verdict(response: httpx2.Response, secrets: tuple[str, ...]) -> Verdict:
    """An error response, classified from its status, headers and the first few kB of its
    body (an error body is small; an endless one is not read to its end)."""
    text = b""
    with anyio.move_on_after(1.0):
        try:
            async for chunk in response.aiter_bytes():
                text += chunk
                if len(text) >= _ERROR_BODY_LIMIT:
                    break
        except Exception:  # noqa: S110 - the status says enough
            pass
    verdict = classify_status(
        response.status_code, response.headers, text[:_ERROR_BODY_LIMIT], now=time.time()
    )
    return _redacted(verdict, secrets)


def _redacted(verdict: Verdict, secrets: tuple[str, ...]) -> Verdict:
    return replace(verdict, detail=redact(verdict.detail, secrets))
