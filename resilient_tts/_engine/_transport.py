"""`SpeechTransport`: the cut between openai's client and the engine.

An `httpx2` transport, so openai's own `AsyncOpenAI` (ours, or one a framework builds around
our `http_client`) does everything above it: parameters, `extra_body`, results, streamed
responses, `with_raw_response`. A ``POST .../audio/speech`` reaching it is read (its JSON
body; any key beyond the known parameters is passed to the deployments as openai's
`extra_body` would be), routed by `model` to its pool and served by the engine; the answer's
headers are true to the audio the caller receives. Whatever base URL and key the client
holds, only each deployment's own key goes out.

Errors are raised from here as our own exceptions, which are also openai's (openai passes an
`OpenAIError` raised by its transport through as it is, never retried): see `_exceptions`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

import httpx2

from .._config._request import SpeechRequest, validate_request
from .._exceptions import InvalidRequestError, ResilientTTSError
from ._engine import SpeechEngine
from ._streaming import SpeechStream

__all__ = ["RESULT", "STREAM", "SYNC_READ_WHOLE", "SpeechTransport", "deadline_from"]

# Where the response keeps what the engine made of the request, for `SpeechResponse` and
# `StreamedSpeechResponse` (`httpx2.Response.extensions`).
RESULT = "resilient_tts.result"
STREAM = "resilient_tts.stream"
SYNC_READ_WHOLE = "resilient_tts.read_whole"  # SyncSpeechClient's way to `read_whole()`

_PARAMETERS = frozenset(
    ("model", "voice", "input", "response_format", "speed", "instructions", "stream_format")
)
# Headers of the caller's request that are the caller's client's business, not the
# deployment's: its key, openai's own bookkeeping, and what httpx2 sets per request.
_NOT_FORWARDED = frozenset(
    (
        "host",
        "authorization",
        "content-length",
        "content-type",
        "accept",
        "accept-encoding",
        "connection",
        "user-agent",
        "openai-organization",
        "openai-project",
        "idempotency-key",
        "cookie",
    )
)
_CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",  # Ogg Opus, as OpenAI sends it
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
# openai's default client timeout (600 s, connect 5 s): a client built without one, e.g. by
# a framework around our http_client, means no timeout given; the pool's deadline applies.
_OPENAI_DEFAULT = {"connect": 5.0, "read": 600.0, "write": 600.0, "pool": 600.0}


class SpeechTransport(httpx2.AsyncBaseTransport):
    """Serves openai's speech requests from the engine's pools. Other requests get a harmless
    answer: ``GET`` anything is 200 ``{}`` (LiveKit's prewarm), anything else a 404."""

    def __init__(self, engine: SpeechEngine) -> None:
        self.engine = engine

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.method == "POST" and request.url.path.endswith("/audio/speech"):
            try:
                return await self._speech(request)
            except ResilientTTSError as exc:
                bind = getattr(exc, "bind", None)
                if bind is not None:
                    bind(request)
                raise
        if request.method in ("GET", "HEAD"):
            return httpx2.Response(200, json={}, request=request)
        message = "resilient_tts serves POST /audio/speech only"
        return httpx2.Response(
            404, json={"error": {"message": message, "type": "not_found"}}, request=request
        )

    async def aclose(self) -> None:
        await self.engine.aclose()

    async def _speech(self, request: httpx2.Request) -> httpx2.Response:
        speech = parse_speech_request(request, self.engine.settings.models.keys())
        if request.headers.get("x-stainless-raw-response") == "stream":
            stream = self.engine.stream(speech)
            await stream.open()
            return httpx2.Response(
                200,
                headers=_headers(speech, stream.deployment, stream.request_id, None),
                stream=_Body(stream),
                request=request,
                extensions={STREAM: stream},
            )
        result = await self.engine.synthesize(speech)
        return httpx2.Response(
            200,
            headers=_headers(speech, result.deployment, result.request_id, len(result.content)),
            content=result.content,
            request=request,
            extensions={RESULT: result},
        )


def parse_speech_request(request: httpx2.Request, known_models: Any) -> SpeechRequest:
    """The speech request in openai's JSON body, validated; `InvalidRequestError` otherwise."""
    if request.url.query:
        raise InvalidRequestError(
            "extra_query is not supported: deployments differ; use extra_body"
        )
    try:
        body = json.loads(request.content or b"{}")
    except (ValueError, httpx2.RequestNotRead) as exc:
        raise InvalidRequestError("the speech request's body is not JSON") from exc
    if not isinstance(body, dict):
        raise InvalidRequestError("the speech request's body is not a JSON object")
    extra_body = {key: value for key, value in body.items() if key not in _PARAMETERS}
    extra_headers = {
        name: value
        for name, value in request.headers.items()
        if name not in _NOT_FORWARDED and not name.startswith("x-stainless-")
    }
    return validate_request(
        known_models=known_models,
        model=body.get("model"),
        voice=body.get("voice"),
        input=body.get("input"),
        response_format=body.get("response_format", "mp3"),
        speed=body.get("speed"),
        instructions=body.get("instructions"),
        stream_format=body.get("stream_format"),
        extra_headers=extra_headers or None,
        extra_body=extra_body or None,
        timeout=deadline_from(request.extensions.get("timeout")),
    )


def deadline_from(timeout: Mapping[str, float | None] | None) -> float | None:
    """A per-call ``timeout=`` bounds the whole request: its longest part, as one deadline
    (``httpx2.Timeout(30, connect=10)`` gives 30 s). openai's own default means none given."""
    if not timeout or dict(timeout) == _OPENAI_DEFAULT:
        return None
    given = [value for value in timeout.values() if value is not None]
    return max(given) if given else None


def _headers(
    request: SpeechRequest, deployment: str, request_id: str | None, length: int | None
) -> dict[str, str]:
    headers = {
        "content-type": _CONTENT_TYPES[request.response_format],
        "x-resilient-tts-deployment": deployment,
    }
    headers["x-request-id"] = request_id or f"resilient-tts-{uuid.uuid4().hex}"
    if length is not None:
        headers["content-length"] = str(length)
    return headers


class _Body(httpx2.AsyncByteStream):
    """A stream's audio as httpx2 reads a body; closing the response releases the stream.
    An iterator object, not an async generator: a reader that stops early leaves nothing
    for the garbage collector to finalize (trio warns about abandoned generators)."""

    def __init__(self, stream: SpeechStream) -> None:
        self._stream = stream

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._stream.next_chunk(None)
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        await self._stream.release(None)
