"""Configuration as frozen value objects.

These are the objects the rest of the package reads. They validate themselves, so a
`Deployment` built in Python is checked exactly like one read from ``RESILIENT_TTS_MODELS``.
`_settings.py` turns environment variables and settings files into them.

    Deployment(name="gpu-a", base_url="http://10.0.0.5:8880/v1", model="kokoro",
               voices={"alloy": "af_bella"}, formats=["mp3", "wav", "pcm"])
    Pool(deployments=[Deployment(...), Deployment(...)], first_byte_timeout=3)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from .._exceptions import ConfigurationError

__all__ = [
    "ALL_FORMATS",
    "Deployment",
    "Pool",
    "ResponseFormat",
    "Timeouts",
    "describe_validation_error",
    "validating",
]

ResponseFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
ALL_FORMATS: tuple[ResponseFormat, ...] = ("mp3", "opus", "aac", "flac", "wav", "pcm")

Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Every time limit that applies to one request, in seconds.

    `deadline` covers the whole request, all attempts and waits included; the other three
    apply to each attempt.
    """

    deadline: float = 60.0
    attempt: float = 30.0
    first_byte: float = 10.0
    stall: float = 5.0


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    def __init__(self, **data: Any) -> None:
        # Built in Python, a bad value is a ConfigurationError too, and never echoes a key.
        # pydantic calls this for nested models as well; only the outermost call converts,
        # so the message keeps the whole path ("kokoro.deployments[1].base_url").
        with validating() as outermost:
            try:
                super().__init__(**data)
            except ValidationError as exc:
                if not outermost:
                    raise
                raise ConfigurationError(
                    describe_validation_error(exc, lambda _: type(self).__name__)
                ) from None


_validation_depth: ContextVar[int] = ContextVar("resilient_tts_validation_depth", default=0)


@contextmanager
def validating() -> Iterator[bool]:
    """Marks a validation in progress; yields whether it is the outermost one."""
    depth = _validation_depth.get()
    token = _validation_depth.set(depth + 1)
    try:
        yield depth == 0
    finally:
        _validation_depth.reset(token)


class _TimeoutOverrides(_Frozen):
    """Knobs that a pool or a deployment may override; None means "inherit"."""

    deadline: Seconds | None = None
    attempt_timeout: Seconds | None = None
    first_byte_timeout: Seconds | None = None
    stall_timeout: Seconds | None = None
    breaker_open_seconds: Seconds | None = None


class Deployment(_TimeoutOverrides):
    """One server that can synthesize a logical model: where it is and what it takes."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    base_url: str
    model: Annotated[str, Field(min_length=1)]
    api_key: SecretStr | None = None
    voices: dict[str, str] = Field(default_factory=dict)
    formats: tuple[ResponseFormat, ...] = ALL_FORMATS
    sample_rate: Annotated[int, Field(ge=8000, le=192000)] = 24000
    max_input_chars: Annotated[int, Field(ge=1)] = 4096
    # Orpheus-FastAPI and chatterbox ignore `speed`; a plain OpenAI-compatible server may
    # reject `instructions`. Whatever a deployment does not take is dropped, and the
    # result says so.
    accepts_speed: bool = True
    accepts_instructions: bool = True

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            # The value is not echoed: a URL may carry credentials.
            raise ValueError(
                "must be an http:// or https:// URL with a host, like http://10.0.0.5:8880/v1"
            )
        if parts.username or parts.password:
            raise ValueError("must not carry credentials; put the key in api_key")
        return value.rstrip("/")

    @field_validator("api_key", mode="before")
    @classmethod
    def _key_from_environment(cls, value: Any) -> Any:
        # LiteLLM's convention, kept so translated configs hold references, not keys.
        if isinstance(value, str) and value.startswith("os.environ/"):
            name = value.removeprefix("os.environ/")
            if name not in os.environ:
                raise ValueError(f"refers to the environment variable {name}, which is not set")
            return os.environ[name]
        return value

    @field_validator("formats")
    @classmethod
    def _check_formats(cls, value: tuple[ResponseFormat, ...]) -> tuple[ResponseFormat, ...]:
        if not value:
            raise ValueError("must list at least one format the server produces")
        return tuple(dict.fromkeys(value))

    def __repr__(self) -> str:
        # Never the key: only whether there is one.
        key = "set" if self.api_key is not None else "none"
        return (
            f"Deployment(name={self.name!r}, base_url={self.base_url!r}, "
            f"model={self.model!r}, api_key={key})"
        )

    __str__ = __repr__


class Pool(_TimeoutOverrides):
    """An ordered list of deployments that serve one logical model, first preferred."""

    deployments: Annotated[tuple[Deployment, ...], Field(min_length=1)]
    hedge_delay: Seconds | None = None

    @field_validator("deployments", mode="before")
    @classmethod
    def _field_names_are_strings(cls, value: Any) -> Any:
        # pydantic builds each Deployment(**fields): a non-str key would be a bare TypeError.
        if isinstance(value, list | tuple) and not all(_str_keys(item) for item in value):
            raise ValueError("each deployment must be a mapping whose field names are strings")
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> Pool:
        seen: set[str] = set()
        for deployment in self.deployments:
            if deployment.name in seen:
                raise ValueError(
                    f"deployment name {deployment.name!r} appears twice; names must be unique"
                )
            seen.add(deployment.name)
        return self


def _str_keys(value: object) -> bool:
    return not isinstance(value, Mapping) or all(isinstance(key, str) for key in value)


# Fields whose offending value may be shown in an error message: none of them can hold a secret.
_ECHO_SAFE = frozenset({"formats", "transport", "sample_rate", "max_input_chars"})


def describe_validation_error(exc: ValidationError, source_of: Callable[[str], str]) -> str:
    """One line per problem: where it came from (`source_of(top-level field)`), the field path,
    and what is wrong. Values are shown only for fields that cannot hold a secret."""
    errors = exc.errors(include_input=True, include_url=False)
    lines = []
    for error in errors:
        loc = [str(part) for part in error["loc"]]
        if not loc or _echo_of_deeper_error(error, errors):
            continue
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field; check the spelling against docs/configuration.md"
        if loc[-1] in _ECHO_SAFE or (len(loc) > 1 and loc[-2] in _ECHO_SAFE):
            message += f" (got {error['input']!r})"
        lines.append(f"{source_of(loc[0])}: {_path(loc)}: {message}")
    if len(lines) == 1:
        return lines[0]
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _echo_of_deeper_error(error: ErrorDetails, errors: list[ErrorDetails]) -> bool:
    """pydantic adds "should have at least 1 item" to a list whose only item was invalid."""
    loc = error["loc"]
    return error["type"] == "too_short" and any(
        other["loc"][: len(loc)] == loc and len(other["loc"]) > len(loc) for other in errors
    )


def _path(parts: list[str]) -> str:
    """['models', 'kokoro', 'deployments', '1', 'base_url'] -> 'kokoro.deployments[1].base_url'."""
    if len(parts) > 1 and parts[0] == "models":
        parts = parts[1:]
    text = ""
    for part in parts:
        text += f"[{part}]" if part.isdigit() else (f".{part}" if text else part)
    return text
