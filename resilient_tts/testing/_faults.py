"""Faults: what a `FakeSpeechServer` does with the requests it receives.

A `Fault` is a frozen value built by one of its constructors, e.g. `Fault.status(503)` or
`Fault.fail_times(2, Fault.reset())`. Composite faults (`fail_times`, `flapping`) keep no state
themselves: the server counts requests and measures time from the moment a fault is set, and
`resolve` turns a composite into the plain fault that answers one request.

How refusal is done: `refuse` on its own, or as the down phase of `flapping`, really closes the
listening socket (connects get ECONNREFUSED; a background task reopens it on schedule, on the
same port). A refusal that only a request count can end (`fail_times(n, refuse())`) cannot be
counted while nothing listens, so it is emulated: the port stays open and each connection is
accepted and reset at once, counting as one of the `n`. Such connections never reach `hits`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Literal

from ._audio import FORMATS
from ._bodies import guess_content_type, openai_error, status_error

NotAudioKind = Literal["json", "html", "empty", "garbage"]
NOT_AUDIO_KINDS: dict[str, NotAudioKind] = {
    "json": "json",
    "html": "html",
    "empty": "empty",
    "garbage": "garbage",
}


class Fault:
    """What the server does with a request. Build one with the constructors below."""

    __slots__ = ()

    @staticmethod
    def ok() -> Fault:
        """200 with real audio in the requested format."""
        return Ok()

    @staticmethod
    def refuse() -> Fault:
        """Nothing listens: connects fail with ECONNREFUSED and open connections are dropped."""
        return Refuse()

    @staticmethod
    def reset() -> Fault:
        """Read the request, then reset the connection (RST) without a response."""
        return Reset()

    @staticmethod
    def hang() -> Fault:
        """Read the request and never answer, until the client leaves or the server stops."""
        return Hang()

    @staticmethod
    def slow_first_byte(seconds: float) -> Fault:
        """Send nothing at all for `seconds`, then a normal response."""
        return SlowFirstByte(seconds)

    @staticmethod
    def stall(after_bytes: int, seconds: float | None = None) -> Fault:
        """Headers, `after_bytes` of body, silence for `seconds` (None: forever), then the rest."""
        return Stall(after_bytes, seconds)

    @staticmethod
    def cut(after_bytes: int) -> Fault:
        """Send headers with the full length and `after_bytes` of body, then close."""
        return Cut(after_bytes)

    @staticmethod
    def truncated(after_bytes: int) -> Fault:
        """A well-framed 200 (right Content-Length, or a chunked body ended properly) that
        holds only the first `after_bytes` of the audio: an encoder that died mid-clip while
        the server finished the response anyway. Only the audio itself shows the cut."""
        return Truncated(after_bytes)

    @staticmethod
    def status(
        code: int,
        *,
        retry_after: float | None = None,
        retry_after_ms: float | None = None,
        retry_after_date: bool = False,
        body: str | bytes | None = None,
    ) -> Fault:
        """An OpenAI-style JSON error (or `body`) with optional Retry-After/retry-after-ms."""
        if body is None:
            payload = status_error(code)
        else:
            payload = body.encode() if isinstance(body, str) else body
        return Status(
            code,
            payload,
            guess_content_type(payload),
            retry_after,
            retry_after_ms,
            retry_after_date,
        )

    @staticmethod
    def model_not_found(model: str = "kokoro") -> Fault:
        """400 from llama-swap for a model it does not know: ``could not find real modelID``."""
        # llama-swap's sendErrorResponse: gin.H{"error": message}, a string, not an object.
        body = json.dumps({"error": f"could not find real modelID for {model}"}).encode()
        return Status(400, body, "application/json; charset=utf-8")

    @staticmethod
    def unauthorized() -> Fault:
        """401 with OpenAI's ``invalid_api_key`` error."""
        return Fault.status(401)

    @staticmethod
    def not_found() -> Fault:
        """404 with OpenAI's ``model_not_found`` error."""
        return Fault.status(404)

    @staticmethod
    def insufficient_quota() -> Fault:
        """429 with OpenAI's ``insufficient_quota`` error: retrying will not help."""
        body = openai_error(
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            "insufficient_quota",
        )
        return Status(429, body, "application/json")

    @staticmethod
    def rate_limited(retry_after: float | None = None) -> Fault:
        """429 with OpenAI's ``rate_limit_exceeded`` error and an optional Retry-After."""
        return Fault.status(429, retry_after=retry_after)

    @staticmethod
    def unsupported_voice() -> Fault:
        """400 in Kokoro-FastAPI's style: the requested voice is not available here."""
        return UnsupportedVoice()

    @staticmethod
    def unsupported_format() -> Fault:
        """400 saying the requested response_format is not supported here."""
        return UnsupportedFormat()

    @staticmethod
    def not_audio(kind: NotAudioKind = "json", *, content_type: str | None = None) -> Fault:
        """200 whose body is not audio: a JSON error, an HTML page, nothing, or garbage.

        ``"garbage"`` is binary noise labelled ``audio/mpeg``: no audio header, and an odd
        length, so it cannot pass for raw PCM either.
        """
        return NotAudio(kind, content_type)

    @staticmethod
    def fail_times(n: int, fault: Fault, then: Fault | None = None) -> Fault:
        """The first `n` speech requests get `fault`, later ones `then` (default: ok)."""
        return FailTimes(n, fault, Ok() if then is None else then)

    @staticmethod
    def after(n: int, fault: Fault) -> Fault:
        """The first `n` speech requests are served normally, later ones get `fault`: a
        deployment that dies after its third segment is ``Fault.after(3, Fault.refuse())``."""
        return FailTimes(n, Ok(), fault)

    @staticmethod
    def flapping(
        down_seconds: float, fault: Fault | None = None, up_seconds: float | None = None
    ) -> Fault:
        """Serve `fault` (default refuse) for `down_seconds`, then ok; cycle if `up_seconds`."""
        return Flapping(down_seconds, Refuse() if fault is None else fault, up_seconds)

    @staticmethod
    def wrong_format(actual: str, *, content_type: str | None = None, mp4: bool = False) -> Fault:
        """200 with audio in format `actual`, whatever was asked (LocalAI: WAV for pcm).

        ``mp4=True`` (with ``actual="aac"``) wraps the aac in an MP4 (M4A) file instead of
        raw ADTS frames, as openai-edge-tts does.
        """
        return WrongFormat(actual, content_type, mp4)


@dataclass(frozen=True, slots=True)
class Ok(Fault):
    """200 with real audio."""


@dataclass(frozen=True, slots=True)
class Refuse(Fault):
    """Nothing listens on the port."""


@dataclass(frozen=True, slots=True)
class Reset(Fault):
    """Reset the connection after reading the request."""


@dataclass(frozen=True, slots=True)
class Hang(Fault):
    """Never answer."""


@dataclass(frozen=True, slots=True)
class SlowFirstByte(Fault):
    """Silence for `seconds` before the response."""

    seconds: float

    def __post_init__(self) -> None:
        _check_seconds("seconds", self.seconds)


@dataclass(frozen=True, slots=True)
class Stall(Fault):
    """Pause inside the body."""

    after_bytes: int
    seconds: float | None = None

    def __post_init__(self) -> None:
        _check_bytes(self.after_bytes)
        if self.seconds is not None:
            _check_seconds("seconds", self.seconds)


@dataclass(frozen=True, slots=True)
class Cut(Fault):
    """End the body early by closing the connection."""

    after_bytes: int

    def __post_init__(self) -> None:
        _check_bytes(self.after_bytes)


@dataclass(frozen=True, slots=True)
class Truncated(Fault):
    """A complete response whose audio is cut short."""

    after_bytes: int

    def __post_init__(self) -> None:
        _check_bytes(self.after_bytes)


@dataclass(frozen=True, slots=True)
class Status(Fault):
    """An HTTP error response."""

    code: int
    body: bytes = field(repr=False)
    content_type: str
    retry_after: float | None = None
    retry_after_ms: float | None = None
    retry_after_date: bool = False

    def __post_init__(self) -> None:
        if not 300 <= self.code <= 599:
            raise ValueError(f"status code must be 300..599, got {self.code}")
        if self.retry_after is not None:
            _check_seconds("retry_after", self.retry_after)
        if self.retry_after_ms is not None:
            _check_seconds("retry_after_ms", self.retry_after_ms)
        if self.retry_after_date and self.retry_after is None:
            raise ValueError("retry_after_date=True needs retry_after (seconds from now)")

    def __repr__(self) -> str:
        # Short enough for test ids and assertion messages; the body says which error it is.
        parts = [str(self.code)]
        for name in ("retry_after", "retry_after_ms", "retry_after_date"):
            value = getattr(self, name)
            if value not in (None, False):
                parts.append(f"{name}={value!r}")
        body = self.body.decode("utf-8", "replace")
        parts.append(f"body={body[:60] + '...' if len(body) > 60 else body!r}")
        return f"Status({', '.join(parts)})"


@dataclass(frozen=True, slots=True)
class UnsupportedVoice(Fault):
    """400: the requested voice is unknown here."""


@dataclass(frozen=True, slots=True)
class UnsupportedFormat(Fault):
    """400: the requested response_format is not produced here."""


@dataclass(frozen=True, slots=True)
class NotAudio(Fault):
    """200 with a body that is not audio."""

    kind: NotAudioKind = "json"
    content_type: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in NOT_AUDIO_KINDS:
            raise ValueError(
                f"kind must be 'json', 'html', 'empty' or 'garbage', got {self.kind!r}"
            )


@dataclass(frozen=True, slots=True)
class WrongFormat(Fault):
    """200 with audio in another format than the one asked for."""

    actual: str
    content_type: str | None = None
    mp4: bool = False  # aac in an MP4 file rather than ADTS (openai-edge-tts)

    def __post_init__(self) -> None:
        if self.actual not in FORMATS:
            raise ValueError(f"actual must be one of {', '.join(FORMATS)}, got {self.actual!r}")
        if self.mp4 and self.actual != "aac":
            raise ValueError(f"only aac comes in MP4 (mp4=True), not {self.actual!r}")


@dataclass(frozen=True, slots=True)
class FailTimes(Fault):
    """`fault` for the first `n` speech requests, then `then`."""

    n: int
    fault: Fault
    then: Fault = field(default_factory=Ok)

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"n must be >= 0, got {self.n}")


@dataclass(frozen=True, slots=True)
class Flapping(Fault):
    """`fault` for `down_seconds`, then ok (for `up_seconds`, then down again, if given)."""

    down_seconds: float
    fault: Fault = field(default_factory=Refuse)
    up_seconds: float | None = None

    def __post_init__(self) -> None:
        _check_seconds("down_seconds", self.down_seconds)
        if self.up_seconds is not None and not self.up_seconds > 0:
            raise ValueError(f"up_seconds must be > 0, got {self.up_seconds}")


def _check_seconds(name: str, value: float) -> None:
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_bytes(after_bytes: int) -> None:
    if after_bytes < 0:
        raise ValueError(f"after_bytes must be >= 0, got {after_bytes}")


# Resolution: composite faults -> the plain fault that answers one request.


@dataclass
class FaultClock:
    """Per-`set_fault` state of composite faults: when it was set, requests seen by each part."""

    started_at: float
    served: dict[int, int] = field(default_factory=dict)  # id(FailTimes) -> requests counted


def resolve(fault: Fault, clock: FaultClock, now: float, *, consume: bool) -> Fault:
    """The plain fault for a request at `now`; `consume` counts it against `fail_times`."""
    while True:
        if isinstance(fault, FailTimes):
            seen = clock.served.get(id(fault), 0)
            if seen >= fault.n:
                fault = fault.then
                continue
            if consume:
                clock.served[id(fault)] = seen + 1
            fault = fault.fault
        elif isinstance(fault, Flapping):
            down, _ = _flapping_phase(fault, now - clock.started_at)
            fault = fault.fault if down else Ok()
        else:
            return fault


def listener_plan(fault: Fault, elapsed: float) -> tuple[bool, float | None]:
    """Whether the port should refuse connections `elapsed` seconds after the fault was set,
    and the elapsed time at which that may next change (None: never by itself).

    Only time decides this. Refuse inside `fail_times` is counted per connection instead, so
    the listener stays open and such connections are accepted and reset at once.
    """
    if isinstance(fault, Refuse):
        return True, None
    if isinstance(fault, Flapping):
        down, phase_end = _flapping_phase(fault, elapsed)
        if not down:
            return False, phase_end
        refusing, inner_change = listener_plan(fault.fault, elapsed)
        if inner_change is None or (phase_end is not None and phase_end < inner_change):
            return refusing, phase_end
        return refusing, inner_change
    return False, None


def _flapping_phase(fault: Flapping, elapsed: float) -> tuple[bool, float | None]:
    """(down?, elapsed time when the current phase ends, or None if it never does)."""
    if fault.up_seconds is None:
        if elapsed < fault.down_seconds:
            return True, fault.down_seconds
        return False, None
    period = fault.down_seconds + fault.up_seconds
    cycle_start = math.floor(elapsed / period) * period
    if elapsed - cycle_start < fault.down_seconds:
        return True, cycle_start + fault.down_seconds
    return False, cycle_start + period
