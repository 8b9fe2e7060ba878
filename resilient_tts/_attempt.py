"""One attempt at one deployment: send the request, watch the clock, check what comes back.

The attempt opens the response as a stream, so it can tell the first byte from the headers
and notice a body that stalls, instead of waiting for a whole clip behind one timeout. Every
failure leaves as an `AttemptError` carrying its `Verdict`, the original error chained.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
import openai
from openai import AsyncOpenAI, omit

from ._classify import FailureKind, Verdict, classify_exception, classify_status, error_message, redact, verdict_for
from ._config import Deployment, ResponseFormat, Timeouts
from ._request import SpeechRequest
from ._transport import NO_AUTHORIZATION

__all__ = ["AttemptError", "AudioStream", "DeploymentRequest", "adapt_request", "first_byte_at", "open_audio_stream"]

# Lossless formats to ask for when a deployment does not produce the requested one natively:
# WAV carries its own sample rate, raw PCM does not, FLAC costs a decode.
_LOSSLESS_PREFERENCE: tuple[ResponseFormat, ...] = ("wav", "pcm", "flac")
# openai wraps errors before the headers; errors in the body come straight from httpx2 (openai's
# aiohttp transport maps aiohttp's errors onto httpx2's).
_TRANSPORT_ERRORS = (openai.APIConnectionError, httpx2.TransportError, OSError)
_TEXT_TYPES = ("application/json", "text/", "application/problem+json", "application/xml")
# When this task's attempt received its first body byte (anyio clock): the failover loop reads
# it for first-byte latency without the attempt function having to return it.
first_byte_at: ContextVar[float | None] = ContextVar("resilient_tts_first_byte_at", default=None)


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
        asked = next((f for f in _LOSSLESS_PREFERENCE if f in deployment.formats), deployment.formats[0])
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
    ) -> None:
        self.first_chunk = first_chunk
        self.content_type = content_type
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
                except _TRANSPORT_ERRORS as exc:
                    raise AttemptError(classify_exception(exc, headers_received=True)) from exc
            if stall.cancelled_caught:
                raise AttemptError(verdict_for(FailureKind.STALL, f"no data for {self._stall_timeout:g}s after {self.received} bytes"))
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
                except _TRANSPORT_ERRORS as exc:
                    raise AttemptError(classify_exception(exc, headers_received=True)) from exc
                self.received += len(chunk)
                parts.append(chunk)
        if stall.cancelled_caught:
            raise AttemptError(verdict_for(FailureKind.STALL, f"no data for {self._stall_timeout:g}s after {self.received} bytes"))
        self._check_length()
        return b"".join(parts)

    def _check_length(self) -> None:
        if self._content_length is not None and self.received < self._content_length:
            raise AttemptError(
                verdict_for(FailureKind.SHORT_BODY, f"body ended after {self.received} of {self._content_length} bytes")
            )


@asynccontextmanager
async def open_audio_stream(
    client: AsyncOpenAI,
    deployment: Deployment,
    request: SpeechRequest,
    sent: DeploymentRequest,
    timeouts: Timeouts,
) -> AsyncIterator[AudioStream]:
    """Sends the request and yields once the first body byte is in; bounded by the first-byte timeout.

    The caller bounds the whole attempt (attempt timeout and deadline) with its own scope.
    """
    secrets = [deployment.api_key.get_secret_value()] if deployment.api_key else []
    headers: dict[str, Any] = dict(request.extra_headers or {})
    if deployment.api_key is None:
        headers.update(NO_AUTHORIZATION)
    response_cm = client.audio.speech.with_streaming_response.create(
        model=deployment.model,
        voice=sent.voice,
        input=request.input,
        response_format=sent.asked_format,
        speed=omit if sent.speed is None else sent.speed,
        instructions=omit if sent.instructions is None else sent.instructions,
        stream_format=omit if request.stream_format is None else request.stream_format,  # type: ignore[arg-type]
        extra_headers=headers,
        extra_body=dict(request.extra_body) if request.extra_body else None,
    )
    headers_received = False
    with anyio.move_on_after(timeouts.first_byte) as first_byte:
        try:
            response = await response_cm.__aenter__()
        except openai.APIStatusError as exc:
            raise AttemptError(_status_verdict(exc, secrets)) from exc
        except _TRANSPORT_ERRORS as exc:
            raise AttemptError(_redacted(classify_exception(exc, headers_received=False), secrets)) from exc
        headers_received = True
        try:
            content_type = response.headers.get("content-type", "").lower()
            body = response.iter_bytes()
            try:
                first_chunk = await body.__anext__()
                first_byte_at.set(anyio.current_time())
            except StopAsyncIteration:
                first_chunk = b""
            except _TRANSPORT_ERRORS as exc:
                raise AttemptError(classify_exception(exc, headers_received=True)) from exc
        except BaseException:
            await _close_quietly(response_cm)
            raise
    if first_byte.cancelled_caught:
        if headers_received:
            await _close_quietly(response_cm)
        raise AttemptError(verdict_for(FailureKind.FIRST_BYTE_TIMEOUT, f"no audio within {timeouts.first_byte:g}s"))
    try:
        if not first_chunk or content_type.startswith(_TEXT_TYPES) or first_chunk[:1] in (b"{", b"<", b"["):
            rest = first_chunk + b"".join([chunk async for chunk in _limited(body, 4096)])
            message = redact(error_message(rest), secrets) or "empty body"
            raise AttemptError(verdict_for(FailureKind.NOT_AUDIO, f"HTTP 200 but not audio ({content_type or 'no content type'}): {message}"))
        length = response.headers.get("content-length")
        encoded = response.headers.get("content-encoding", "identity") != "identity"
        yield AudioStream(
            first_chunk,
            body,
            content_type=content_type,
            content_length=int(length) if length and length.isdigit() and not encoded else None,
            stall_timeout=timeouts.stall,
        )
    except BaseException:
        await _close_quietly(response_cm)
        raise
    # Body read to the end: closing returns the connection to the pool and cannot hang.
    await response_cm.__aexit__(None, None, None)


async def _limited(body: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    received = 0
    with anyio.move_on_after(1.0):  # an error page is small; do not wait on a slow one
        async for chunk in body:
            yield chunk
            received += len(chunk)
            if received >= limit:
                return


async def _close_quietly(response_cm: Any) -> None:
    with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
        try:
            await response_cm.__aexit__(None, None, None)
        except Exception:  # noqa: S110 - the attempt already failed or finished; closing is best effort
            pass


def _status_verdict(exc: openai.APIStatusError, secrets: list[str]) -> Verdict:
    response = exc.response
    body: object = exc.body if exc.body is not None else _safe_text(response)
    verdict = classify_status(response.status_code, response.headers, body, now=time.time())
    return _redacted(verdict, secrets)


def _safe_text(response: Any) -> str:
    try:
        return str(response.text)
    except Exception:
        return ""


def _redacted(verdict: Verdict, secrets: list[str]) -> Verdict:
    from dataclasses import replace

    return replace(verdict, detail=redact(verdict.detail, secrets))
