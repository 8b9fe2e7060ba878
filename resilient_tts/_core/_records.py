"""What a request leaves behind besides audio: each attempt made, and each segment spoken."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ._classify import FailureKind

__all__ = ["Attempt", "AttemptOutcome", "SpeechSegment", "Synthesized", "describe_attempts"]


class AttemptOutcome(enum.StrEnum):
    SUCCESS = "success"
    FAILED = "failed"
    SKIPPED = "skipped"  # the breaker or a Retry-After cooldown kept us away; nothing was sent
    CANCELLED = "cancelled"  # the caller cancelled, or a hedge lost the race


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try at one deployment, in the order the tries were made.

    `adaptations` says what was changed for this deployment ("voice 'alloy' -> 'af_bella'",
    "speed dropped: not accepted", "asked for wav, transcoded to mp3"), so nothing is silent.
    """

    deployment: str
    outcome: AttemptOutcome
    elapsed: float
    error: str | None = None
    kind: FailureKind | None = None
    status_code: int | None = None
    adaptations: tuple[str, ...] = ()

    def __str__(self) -> str:
        text = f"{self.deployment}: {self.outcome.value} after {self.elapsed:.3f}s"
        return f"{text} ({self.error})" if self.error else text


@dataclass(frozen=True, slots=True)
class SpeechSegment:
    """One piece of a long text, as it was spoken: `text[start:end]` of the input, by
    `deployment`, lasting `duration` seconds of the output (None when the audio was passed
    through without decoding). A text that fit in one request is one segment."""

    index: int
    start: int
    end: int
    deployment: str
    duration: float | None


def describe_attempts(attempts: tuple[Attempt, ...] | list[Attempt]) -> str:
    return "; ".join(str(attempt) for attempt in attempts) or "no deployment could be tried"


@dataclass(frozen=True, slots=True)
class Synthesized:
    """A whole request's audio as the engine hands it up: the bytes in the asked format, and
    the story of how they were obtained. `SpeechResponse` is its public face."""

    content: bytes
    deployment: str
    attempts: tuple[Attempt, ...]
    response_format: str
    sample_rate: int
    duration: float | None
    segments: tuple[SpeechSegment, ...]
    request_id: str | None = None  # the serving deployment's x-request-id, if it sent one
