"""The errors resilient_tts raises.

Every error derives from `ResilientTTSError`; built-in bases are added where they fit, so
``except ValueError`` and ``except TimeoutError`` keep working in apps that already use them,
and every error a request can raise is also the openai exception that code written for
`openai.AsyncOpenAI` already catches (LiveKit, Pipecat, LiteLLM map those). The last
attempt's exception (an `httpx2` error, an HTTP status, a stall) is chained as ``__cause__``.

    ResilientTTSError
    ├── ConfigurationError (ValueError)        bad configuration, raised when the client is built
    ├── InvalidRequestError (ValueError, openai.BadRequestError)
    │                                          a bad request, raised before any network call
    ├── AllDeploymentsFailedError (openai.APIStatusError)
    │   │                                      every deployment that could be tried failed
    │   └── DeadlineExceededError (TimeoutError, openai.APITimeoutError)
    │                                          ... because the request's deadline ran out
    ├── StreamInterruptedError (openai.APIConnectionError)
    │                                          failure after audio had reached the caller
    ├── AudioError                             audio that cannot be decoded or encoded
    ├── UnknownDeploymentError (KeyError)      no deployment has that name (`force_open`, `reset`)
    └── ClientClosedError (RuntimeError)       the client was used after `aclose()`

The openai attributes are there too: `status_code` (400; 503, or the status every attempt
agreed on, such as 401), `body` (a JSON object; for `AllDeploymentsFailedError` it lists the
attempts), `request` and `response` (set once the request reached the client's transport).
No message ever contains an API key: messages name deployments, fields and variables.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import httpx2
import openai

if TYPE_CHECKING:
    from ._core._records import Attempt

__all__ = [
    "AllDeploymentsFailedError",
    "AudioError",
    "ClientClosedError",
    "ConfigurationError",
    "DeadlineExceededError",
    "InvalidRequestError",
    "ResilientTTSError",
    "StreamInterruptedError",
    "UnknownDeploymentError",
]


class ResilientTTSError(Exception):
    """Base class of every error raised by resilient_tts."""


class _OpenAIShaped:
    """What an openai exception carries, for the errors that are also one. openai's own
    constructors need a request (and a response) that does not exist yet where the error is
    raised; `bind` adds them when the request is known (`SpeechTransport`)."""

    message: str
    request: httpx2.Request
    body: object | None
    code: str | None
    param: str | None
    type: str | None

    def _shape(self, message: str, body: object | None, status_code: int | None = None) -> None:
        self.message = message
        self.body = body
        error = body.get("error") if isinstance(body, dict) else None
        self.code = error.get("code") if isinstance(error, dict) else None
        self.type = error.get("type") if isinstance(error, dict) else None
        self.param = None
        self.request = None  # type: ignore[assignment]  # bound by the transport
        if status_code is not None:
            # Set like this: openai's classes declare these (Literal[400] for a 400).
            setattr(self, "status_code", status_code)  # noqa: B010
            setattr(self, "response", None)  # noqa: B010  # bound by the transport
            setattr(self, "request_id", None)  # noqa: B010

    def bind(self, request: httpx2.Request) -> None:
        """Attaches the request (and, for status errors, a response telling the same story)."""
        self.request = request
        if isinstance(self, openai.APIStatusError):
            response = httpx2.Response(self.status_code, json=self.body, request=request)
            setattr(self, "response", response)  # noqa: B010


def _error_body(kind: str, message: str, **more: Any) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": kind, **more}}


class ConfigurationError(ResilientTTSError, ValueError):
    """The configuration is invalid. Raised when a `SpeechClient` is built, never later.

    The message names the environment variable (or settings file) and the field that is
    wrong, and what to write instead. Secrets are never echoed.
    """


class InvalidRequestError(ResilientTTSError, ValueError, _OpenAIShaped, openai.BadRequestError):
    """The request itself is bad (empty text, unknown model, speed out of range, ...).

    Raised before any network call: no deployment is charged for the caller's mistake.
    Also an `openai.BadRequestError` (status 400), which is never retried.
    """

    def __init__(self, message: str) -> None:
        Exception.__init__(self, message)
        self._shape(message, _error_body("invalid_request_error", message), 400)


class AllDeploymentsFailedError(ResilientTTSError, _OpenAIShaped, openai.APIStatusError):
    """Every deployment that could be tried for this request failed.

    `attempts` lists every attempt in the order it was made, with the deployment, the
    outcome and the error of each. Also an `openai.APIStatusError`: `status_code` is the
    status every attempt that got one agreed on (401 when every key was refused), else 503.
    """

    def __init__(self, message: str, *, model: str, attempts: Sequence[Attempt]) -> None:
        Exception.__init__(self, message)
        self.model = model
        self.attempts: tuple[Attempt, ...] = tuple(attempts)
        statuses = {a.status_code for a in self.attempts if a.status_code is not None}
        listed = [
            {"deployment": a.deployment, "outcome": a.outcome.value, "error": a.error}
            | ({"status_code": a.status_code} if a.status_code is not None else {})
            for a in self.attempts
        ]
        body = _error_body(self._kind, message, model=model, attempts=listed)
        self._shape(message, body, statuses.pop() if len(statuses) == 1 else 503)

    _kind = "all_deployments_failed"


class DeadlineExceededError(AllDeploymentsFailedError, TimeoutError, openai.APITimeoutError):
    """The request's deadline ran out before any deployment delivered audio.

    Also an `openai.APITimeoutError`.
    """

    _kind = "deadline_exceeded"


class StreamInterruptedError(ResilientTTSError, _OpenAIShaped, openai.APIConnectionError):
    """A deployment failed after part of its audio had already reached the caller.

    Failing over at that point would splice two different renditions into one clip, so the
    failure is raised instead of ever reporting a truncated clip as success.
    `bytes_delivered` counts the bytes the caller had received. Also an
    `openai.APIConnectionError`: the connection to the audio broke.
    """

    def __init__(
        self,
        message: str,
        *,
        deployment: str,
        bytes_delivered: int,
        attempts: Sequence[Attempt] = (),
    ) -> None:
        Exception.__init__(self, message)
        self._shape(message, None)
        self.deployment = deployment
        self.bytes_delivered = bytes_delivered
        self.attempts: tuple[Attempt, ...] = tuple(attempts)


class AudioError(ResilientTTSError):
    """Audio could not be decoded, converted or encoded."""


class UnknownDeploymentError(ResilientTTSError, KeyError):
    """No configured deployment has the name given (to `SpeechClient.force_open`, `reset`, ...).

    A `KeyError`, so a lookup by name fails the way a mapping lookup does.
    """

    def __init__(self, name: str, known: Sequence[str]) -> None:
        listed = ", ".join(known) or "none"
        super().__init__(f"no deployment is named {name!r}; the configured ones are: {listed}")
        self.name = name

    def __str__(self) -> str:
        # KeyError's own str() is the repr of its argument, quotes and all.
        return str(self.args[0])


class ClientClosedError(ResilientTTSError, RuntimeError):
    """The client was used after `aclose()`; build a new `SpeechClient`."""
