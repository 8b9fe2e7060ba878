"""Checks a speech request before any network call: no deployment pays for a caller's mistake."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, cast

from .._exceptions import InvalidRequestError
from ._values import ALL_FORMATS, ResponseFormat

__all__ = ["SpeechRequest", "validate_request"]

MIN_SPEED, MAX_SPEED = 0.25, 4.0  # the OpenAI API's range

# RFC 9110 section 5.1: a field name is a token. Values: visible ASCII, with spaces and tabs
# inside only (section 5.5; httpx sends str values as ASCII). Anything else would fail on
# the wire, and be counted against a deployment that did nothing wrong.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE = re.compile(r"(?:[\x21-\x7e](?:[\t\x20-\x7e]*[\x21-\x7e])?)?")
# Each deployment sends its own key; HTTP framing is the transport's business.
_RESERVED_HEADERS = frozenset(
    {"authorization", "host", "content-length", "transfer-encoding", "connection"}
)
# Set through their own parameters, which are validated and adapted per deployment.
_RESERVED_BODY = frozenset(
    {"model", "voice", "input", "response_format", "speed", "instructions", "stream_format"}
)


@dataclass(frozen=True, slots=True)
class SpeechRequest:
    model: str
    voice: str
    input: str
    response_format: ResponseFormat
    speed: float | None
    instructions: str | None
    stream_format: str | None
    extra_headers: Mapping[str, str] | None
    extra_body: Mapping[str, object] | None
    timeout: float | None  # overrides the deadline for this one request


def validate_request(
    *,
    known_models: Collection[str],
    model: object,
    voice: object,
    input: object,
    response_format: object,
    speed: object,
    instructions: object,
    stream_format: object,
    extra_headers: object,
    extra_body: object,
    timeout: object,
) -> SpeechRequest:
    """Returns the request as a value object, or raises `InvalidRequestError` saying what to fix."""
    if not isinstance(model, str) or model not in known_models:
        known = ", ".join(sorted(known_models)) or "none (set RESILIENT_TTS_MODELS)"
        raise InvalidRequestError(
            f"model={model!r} is not a configured logical model; known: {known}"
        )
    if not isinstance(input, str) or not input.strip():
        raise InvalidRequestError("input must be a non-empty string of text to speak")
    if not isinstance(voice, str) or not voice.strip():
        raise InvalidRequestError(f"voice must be a non-empty string, got {_short(voice)}")
    if response_format not in ALL_FORMATS:
        raise InvalidRequestError(
            f"response_format={_short(response_format)} is not supported; "
            f"use one of {', '.join(ALL_FORMATS)}"
        )
    if speed is not None:
        if (
            isinstance(speed, bool)
            or not isinstance(speed, int | float)
            or not math.isfinite(speed)
        ):
            raise InvalidRequestError(f"speed must be a number, got {_short(speed)}")
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise InvalidRequestError(
                f"speed={speed} is out of range; use {MIN_SPEED} to {MAX_SPEED}"
            )
    if instructions is not None and not isinstance(instructions, str):
        raise InvalidRequestError(f"instructions must be a string, got {_short(instructions)}")
    if stream_format not in (None, "audio", "sse"):
        raise InvalidRequestError(
            f"stream_format={_short(stream_format)} is not supported; use 'audio' or 'sse'"
        )
    for name, text in (("input", input), ("voice", voice), ("instructions", instructions)):
        _check_unicode(name, text)
    _check_mapping("extra_headers", extra_headers, values=str)
    _check_mapping("extra_body", extra_body, values=object)
    _check_headers(cast(Mapping[str, str] | None, extra_headers))
    _check_body(cast(Mapping[str, object] | None, extra_body))
    return SpeechRequest(
        model=model,
        voice=voice,
        input=input,
        response_format=response_format,
        speed=float(speed) if speed is not None else None,
        instructions=instructions,
        stream_format=stream_format,
        extra_headers=cast(Mapping[str, str] | None, extra_headers),
        extra_body=cast(Mapping[str, object] | None, extra_body),
        timeout=_timeout_seconds(timeout),
    )


def _check_mapping(name: str, value: object, *, values: type) -> None:
    if value is None:
        return
    if not isinstance(value, Mapping) or not all(
        isinstance(key, str) and isinstance(item, values) for key, item in value.items()
    ):
        raise InvalidRequestError(f"{name} must be a mapping of str to {values.__name__}")


def _check_unicode(name: str, text: object) -> None:
    """Text goes out as UTF-8 JSON: a lone surrogate (from a bad decode) cannot."""
    if isinstance(text, str):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidRequestError(
                f"{name} is not valid Unicode text: a lone surrogate at position {exc.start}"
            ) from None


def _check_headers(headers: Mapping[str, str] | None) -> None:
    for name, value in (headers or {}).items():
        if not _HEADER_NAME.fullmatch(name):
            raise InvalidRequestError(f"extra_headers: {_short(name)} is not a valid header name")
        if name.lower() in _RESERVED_HEADERS:
            raise InvalidRequestError(
                f"extra_headers must not set {name}: each deployment sends its own api_key, "
                "and the transport sets the framing headers"
            )
        if not _HEADER_VALUE.fullmatch(value):
            # The value is not echoed: it may be a credential.
            raise InvalidRequestError(
                f"extra_headers: the value of {name} must be printable ASCII, without line breaks "
                "or leading and trailing whitespace"
            )


def _check_body(body: Mapping[str, object] | None) -> None:
    for key in body or {}:
        if key in _RESERVED_BODY:
            raise InvalidRequestError(
                f"extra_body must not set {key!r}: pass it as the {key}= parameter"
            )
    if body:
        try:
            json.dumps(body, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidRequestError(f"extra_body must be plain JSON data: {exc}") from None


def _timeout_seconds(timeout: object) -> float | None:
    """A number of seconds, or an httpx-style Timeout (its longest limit), or None."""
    if timeout is None or type(timeout).__name__ == "NotGiven":
        return None
    if hasattr(timeout, "read") and hasattr(timeout, "connect"):
        limits = [getattr(timeout, name, None) for name in ("connect", "read", "write", "pool")]
        numbers = [float(limit) for limit in limits if isinstance(limit, int | float)]
        return max(numbers) if numbers else None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise InvalidRequestError(
            f"timeout must be a positive number of seconds, got {_short(timeout)}"
        )
    return float(timeout)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
