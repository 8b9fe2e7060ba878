"""Checks a speech request before any network call: no deployment pays for a caller's mistake."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, cast

from ._config import ALL_FORMATS, ResponseFormat
from ._exceptions import InvalidRequestError

__all__ = ["SpeechRequest", "validate_request"]

MIN_SPEED, MAX_SPEED = 0.25, 4.0  # the OpenAI API's range


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
    _check_mapping("extra_headers", extra_headers, values=str)
    _check_mapping("extra_body", extra_body, values=object)
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
