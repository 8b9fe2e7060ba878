"""What real speech servers write back: error envelopes, request validation, non-audio pages.

Pure functions returning response bodies as bytes. OpenAI's envelope is
``{"error": {"message", "type", "param", "code"}}``; Kokoro-FastAPI wraps its errors in
``{"detail": ...}``; llama-swap sends ``{"error": "<text>"}``.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Collection, Iterable
from http import HTTPStatus
from typing import Any

from ._audio import FORMATS

NGINX_PAGE = (
    b"<!DOCTYPE html>\n<html>\n<head>\n<title>Welcome to nginx!</title>\n</head>\n<body>\n"
    b"<h1>Welcome to nginx!</h1>\n<p>If you see this page, the nginx web server is successfully "
    b"installed and working.</p>\n</body>\n</html>\n"
)
"""The page a misrouted nginx answers with status 200."""

_DEFAULT_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to use this model.", "invalid_request_error", None),
    404: (
        "The model does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
    ),
    429: ("Rate limit reached for requests.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request.", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
}


def openai_error(
    message: str, kind: str, code: str | None = None, param: str | None = None
) -> bytes:
    """OpenAI's error envelope."""
    error = {"message": message, "type": kind, "param": param, "code": code}
    return json.dumps({"error": error}).encode()


def kokoro_error(message: str) -> bytes:
    """Kokoro-FastAPI's validation error: ``{"detail": {"error", "message", "type"}}``."""
    detail = {"error": "validation_error", "message": message, "type": "invalid_request_error"}
    return json.dumps({"detail": detail}).encode()


def status_error(code: int) -> bytes:
    """The OpenAI-style body OpenAI (or a server imitating it) sends with status `code`."""
    if code in _DEFAULT_ERRORS:
        return openai_error(*_DEFAULT_ERRORS[code])
    try:
        phrase = HTTPStatus(code).phrase
    except ValueError:
        phrase = f"Error {code}"
    return openai_error(phrase, "server_error" if code >= 500 else "invalid_request_error")


def guess_content_type(body: bytes) -> str:
    """JSON if the body looks like JSON, else plain text."""
    return "application/json" if body.lstrip()[:1] in (b"{", b"[") else "text/plain; charset=utf-8"


def unsupported_format(asked: object, supported: Iterable[str]) -> bytes:
    """400 body: this server does not produce the requested `response_format`."""
    return openai_error(
        f"unsupported response_format {asked!r}: this server produces {', '.join(supported)}",
        "invalid_request_error",
        "unsupported_response_format",
        "response_format",
    )


def unknown_voice(voice: object, available: Collection[str] | None) -> bytes:
    """400 body: Kokoro-FastAPI's ValueError from its voice lookup, as HTTPException(400)."""
    names = ", ".join(sorted(available or ("af_heart",)))
    return kokoro_error(f"Voice '{voice}' not found. Available voices: {names}")


# Binary noise: not text, no audio header anywhere a sniffer looks, and an odd number of
# bytes, so it is not even s16 raw PCM. A stand-in for a half-written file or a proxy that
# mangled the body. (A fixed pattern, so every run sends the same bytes.)
GARBAGE = bytes((n * 151 + 7) % 251 for n in range(4097))


def not_audio(kind: str) -> tuple[bytes, str]:
    """(body, Content-Type) of a 200 that carries no audio: a JSON error, a page, nothing, or
    garbage labelled as mp3."""
    if kind == "json":
        body = openai_error("CUDA out of memory while generating audio", "server_error")
        return body, "application/json"
    if kind == "html":
        return NGINX_PAGE, "text/html"
    if kind == "garbage":
        return GARBAGE, "audio/mpeg"
    return b"", "audio/mpeg"  # labelled as audio, but empty


def validate_speech(
    params: dict[str, Any] | None,
    *,
    formats: Collection[str],
    voices: Collection[str] | None,
    max_input_chars: int | None,
) -> bytes | None:
    """The 400 body a real server sends for these speech parameters, or None if they are fine."""
    if params is None:
        return openai_error(
            "We could not parse the JSON body of your request.", "invalid_request_error"
        )
    for name in ("model", "input"):
        if name not in params:
            return openai_error(
                f"Missing required parameter: '{name}'.",
                "invalid_request_error",
                "missing_required_parameter",
                name,
            )
    text = params["input"]
    if not isinstance(text, str) or not text:
        return _invalid("input", "expected a non-empty string")
    if not isinstance(params["model"], str) or not params["model"]:
        return _invalid("model", "expected a non-empty string")
    if max_input_chars is not None and len(text) > max_input_chars:
        return openai_error(
            f"Invalid 'input': string too long. Expected a string with maximum length "
            f"{max_input_chars}, but got a string with length {len(text)} instead.",
            "invalid_request_error",
            "string_above_max_length",
            "input",
        )
    speed = params.get("speed", 1.0)
    if speed is not None and (
        isinstance(speed, bool) or not isinstance(speed, int | float) or not 0.25 <= speed <= 4
    ):
        return _invalid("speed", "expected a number from 0.25 to 4.0")
    response_format = params.get("response_format") or "mp3"
    if response_format not in FORMATS:
        return _invalid("response_format", f"supported values are {', '.join(FORMATS)}")
    if response_format not in formats:
        return unsupported_format(response_format, formats)
    voice = params.get("voice")
    if voices is not None and voice not in voices:
        return unknown_voice(voice, voices)
    return None


def _invalid(param: str, reason: str) -> bytes:
    return openai_error(
        f"Invalid value for '{param}': {reason}.", "invalid_request_error", "invalid_value", param
    )


def speech_events(audio: bytes, pieces: int = 4) -> bytes:
    """OpenAI's ``stream_format="sse"`` body: `audio` in ``speech.audio.delta`` events (base64,
    in `pieces` parts), then ``speech.audio.done``."""
    size = max(1, math.ceil(len(audio) / pieces))
    events: list[dict[str, object]] = [
        {"type": "speech.audio.delta", "audio": base64.b64encode(audio[i : i + size]).decode()}
        for i in range(0, len(audio), size)
    ]
    usage = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    events.append({"type": "speech.audio.done", "usage": usage})
    return "".join(f"data: {json.dumps(event)}\n\n" for event in events).encode()
