"""What a failed attempt means: SPEC §4's table as pure functions.

Every failure becomes a `Verdict`: its kind, whether the same deployment is worth another
try, what the deployment's circuit breaker should record, and how long a ``Retry-After`` hint
asks us to leave it alone. Every kind fails over to the next deployment; what differs is the
rest of the row.

    classify_status(503, {"retry-after": "2"}, b'{"error": ...}')   # RATE_LIMITED, cooldown 2 s
    classify_exception(exc, headers_received=False)                  # CONNECT, RESET, ...
    verdict_for(FailureKind.STALL)                                   # a failure we detected
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ._retry import parse_retry_after

__all__ = [
    "BreakerEffect",
    "FailureKind",
    "Retry",
    "Verdict",
    "classify_exception",
    "classify_status",
    "redact",
    "verdict_for",
]


class FailureKind(enum.StrEnum):
    CONNECT = "connect"  # refused, DNS, TLS: nothing listens there
    RESET = "reset"  # the connection died before the response headers
    FIRST_BYTE_TIMEOUT = "first_byte_timeout"
    ATTEMPT_TIMEOUT = "attempt_timeout"
    STALL = "stall"  # silence inside the body
    SHORT_BODY = "short_body"  # body ended before its Content-Length or container said
    SERVER_ERROR = "server_error"  # 5xx without a wait hint
    RATE_LIMITED = "rate_limited"  # 429/5xx with Retry-After: the deployment cools down
    THROTTLED = "throttled"  # 429 without a hint
    DEPLOYMENT_BROKEN = "deployment_broken"  # 401/403/404, quota, unknown model: misconfigured
    UNSUPPORTED = "unsupported"  # this deployment lacks the voice, format or parameter
    REJECTED = "rejected"  # another 4xx: this deployment refused this request
    NOT_AUDIO = "not_audio"  # a 200 whose body is not audio


class Retry(enum.Enum):
    NEVER = "never"
    ONCE = "once"  # one more try on the same deployment before failing over, budget allowing
    LAST_RESORT = "last_resort"  # only when no other deployment is left, within the deadline


class BreakerEffect(enum.Enum):
    FAILURE = "failure"
    THROTTLE = "throttle"  # counted apart from failures
    FORCE_OPEN = "force_open"  # a long cooldown; the deployment needs a human
    NONE = "none"  # request-specific; the deployment is healthy


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: FailureKind
    retry: Retry
    breaker: BreakerEffect
    detail: str
    status_code: int | None = None
    cooldown: float | None = None  # seconds, from Retry-After / retry-after-ms


_TABLE: dict[FailureKind, tuple[Retry, BreakerEffect]] = {
    FailureKind.CONNECT: (Retry.NEVER, BreakerEffect.FAILURE),
    FailureKind.RESET: (Retry.ONCE, BreakerEffect.FAILURE),
    FailureKind.FIRST_BYTE_TIMEOUT: (Retry.NEVER, BreakerEffect.FAILURE),
    FailureKind.ATTEMPT_TIMEOUT: (Retry.NEVER, BreakerEffect.FAILURE),
    FailureKind.STALL: (Retry.NEVER, BreakerEffect.FAILURE),
    FailureKind.SHORT_BODY: (Retry.NEVER, BreakerEffect.FAILURE),
    FailureKind.SERVER_ERROR: (Retry.ONCE, BreakerEffect.FAILURE),
    FailureKind.RATE_LIMITED: (Retry.LAST_RESORT, BreakerEffect.NONE),
    FailureKind.THROTTLED: (Retry.LAST_RESORT, BreakerEffect.THROTTLE),
    FailureKind.DEPLOYMENT_BROKEN: (Retry.NEVER, BreakerEffect.FORCE_OPEN),
    FailureKind.UNSUPPORTED: (Retry.NEVER, BreakerEffect.NONE),
    FailureKind.REJECTED: (Retry.NEVER, BreakerEffect.NONE),
    FailureKind.NOT_AUDIO: (Retry.NEVER, BreakerEffect.FAILURE),
}


def verdict_for(
    kind: FailureKind,
    detail: str = "",
    *,
    status_code: int | None = None,
    cooldown: float | None = None,
) -> Verdict:
    retry, breaker = _TABLE[kind]
    return Verdict(
        kind, retry, breaker, detail or kind.value.replace("_", " "), status_code, cooldown
    )


# llama-swap: "could not find real modelID for kokoro"; LocalAI, vLLM and OpenAI word it
# differently. A server that does not know the model is misconfigured, not the request.
_MODEL_UNKNOWN = re.compile(
    r"could not find real modelid|model[^.]{0,80}(not found|does not exist|unknown|not available)"
    r"|unknown model|no such model|invalid model",
    re.IGNORECASE,
)
_LACKS_PARAMETER = re.compile(
    r"voice|response_format|format|speed|instructions|stream_format|not supported|unsupported",
    re.IGNORECASE,
)


def classify_status(
    status: int,
    headers: Mapping[str, str],
    body: object,
    *,
    now: float | None = None,
) -> Verdict:
    """Classifies an HTTP error response. `now` is wall-clock time, for HTTP-date hints."""
    message = error_message(body)
    detail = f"HTTP {status}: {message}" if message else f"HTTP {status}"
    hint = parse_retry_after(headers, now=now)

    def verdict(kind: FailureKind, cooldown: float | None = None) -> Verdict:
        return verdict_for(kind, detail, status_code=status, cooldown=cooldown)

    if status == 429 and "insufficient_quota" in _raw_text(body):
        return verdict(FailureKind.DEPLOYMENT_BROKEN)
    if hint is not None and (status == 429 or status >= 500):
        return verdict(FailureKind.RATE_LIMITED, cooldown=hint)
    if status == 429:
        return verdict(FailureKind.THROTTLED)
    if status >= 500 or status == 408:
        return verdict(FailureKind.SERVER_ERROR)
    if status in (401, 403, 404) or _MODEL_UNKNOWN.search(message):
        return verdict(FailureKind.DEPLOYMENT_BROKEN)
    if status in (400, 422) and _LACKS_PARAMETER.search(message):
        return verdict(FailureKind.UNSUPPORTED)
    return verdict(FailureKind.REJECTED)


def classify_exception(exc: BaseException, *, headers_received: bool) -> Verdict:
    """Classifies a transport failure (from httpx2, or aiohttp through openai's transport)."""
    names = {type(error).__name__ for error in _chain(exc)}
    detail = _describe(exc)
    if headers_received:
        return verdict_for(FailureKind.SHORT_BODY, f"body cut short: {detail}")
    # aiohttp reports a dropped connection as ServerDisconnectedError, which openai's transport
    # maps to httpx's ConnectTimeout: look at the original first.
    if names & {
        "ServerDisconnectedError",
        "RemoteProtocolError",
        "ReadError",
        "WriteError",
        "ConnectionResetError",
        "BrokenPipeError",
    }:
        return verdict_for(FailureKind.RESET, f"connection lost before the response: {detail}")
    if names & {"ConnectError", "ClientConnectorError", "ConnectTimeout", "gaierror", "SSLError"}:
        return verdict_for(FailureKind.CONNECT, f"cannot connect: {detail}")
    return verdict_for(FailureKind.RESET, f"connection failed: {detail}")


def _chain(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup) and current.exceptions:
            # trio reports "all attempts to connect failed" as a group around the real error.
            current = current.exceptions[0]
        else:
            current = current.__cause__ or current.__context__


def _describe(exc: BaseException) -> str:
    # The innermost error says what really happened ("Connection refused"), the outer ones
    # only "Connection error."
    for error in reversed(list(_chain(exc))):
        text = str(error).strip()
        if text:
            return f"{type(error).__name__}: {text}"
    return type(exc).__name__


def error_message(body: object) -> str:
    """The human part of an error body: OpenAI's error.message, FastAPI's detail, or text."""
    if isinstance(body, bytes | bytearray):
        body = bytes(body[:4096]).decode("utf-8", "replace")
    if isinstance(body, str):
        text = body
        try:
            body = json.loads(text)
        except ValueError:
            return " ".join(text.split())[:300]
    if isinstance(body, dict):
        for key in ("message", "msg", "error", "detail"):
            if key in body:
                return error_message(body[key])
        return json.dumps(body)[:300]
    if isinstance(body, list):  # FastAPI's 422: a list of {"loc": ..., "msg": ...}
        return "; ".join(error_message(item) for item in body[:5])
    return "" if body is None else str(body)[:300]


def _raw_text(body: object) -> str:
    if isinstance(body, bytes):
        return body[:4096].decode("utf-8", "replace")
    return json.dumps(body, default=str)[:4096]


_KEY_LIKE = re.compile(r"\b(sk|pk|rk)-[A-Za-z0-9_\-*]{6,}")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Removes API keys from text that came from a server or an exception."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _KEY_LIKE.sub(r"\1-***", text)
