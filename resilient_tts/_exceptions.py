"""The errors resilient_tts raises.

Every error derives from `ResilientTTSError`; built-in bases are added where they fit, so
``except ValueError`` and ``except TimeoutError`` keep working in apps that already use them.
When an error was caused by another one (an `openai` or `httpx2` exception, a pydantic
validation error), the original is chained as ``__cause__``.

    ResilientTTSError
    ├── ConfigurationError (ValueError)        bad configuration, raised when the client is built
    ├── InvalidRequestError (ValueError)       a bad request, raised before any network call
    ├── AllDeploymentsFailedError              every deployment that could be tried failed
    │   └── DeadlineExceededError (TimeoutError)   ... because the request's deadline ran out
    ├── StreamInterruptedError                 failure after audio had reached the caller
    ├── AudioError                             audio that cannot be decoded or encoded
    ├── UnknownDeploymentError (KeyError)      no deployment has that name (`force_open`, `reset`)
    └── ClientClosedError (RuntimeError)       the client was used after `aclose()`

No message ever contains an API key: messages name deployments, fields and variables.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

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


class ConfigurationError(ResilientTTSError, ValueError):
    """The configuration is invalid. Raised when a `SpeechClient` is built, never later.

    The message names the environment variable (or settings file) and the field that is
    wrong, and what to write instead. Secrets are never echoed.
    """


class InvalidRequestError(ResilientTTSError, ValueError):
    """The request itself is bad (empty text, unknown model, speed out of range, ...).

    Raised before any network call: no deployment is charged for the caller's mistake.
    """


class AllDeploymentsFailedError(ResilientTTSError):
    """Every deployment that could be tried for this request failed.

    `attempts` lists every attempt in the order it was made, with the deployment, the
    outcome and the error of each.
    """

    def __init__(self, message: str, *, model: str, attempts: Sequence[Attempt]) -> None:
        super().__init__(message)
        self.model = model
        self.attempts: tuple[Attempt, ...] = tuple(attempts)


class DeadlineExceededError(AllDeploymentsFailedError, TimeoutError):
    """The request's deadline ran out before any deployment delivered audio."""


class StreamInterruptedError(ResilientTTSError):
    """A deployment failed after part of its audio had already reached the caller.

    Failing over at that point would splice two different renditions into one clip, so the
    failure is raised instead of ever reporting a truncated clip as success.
    `bytes_delivered` counts the bytes the caller had received.
    """

    def __init__(
        self,
        message: str,
        *,
        deployment: str,
        bytes_delivered: int,
        attempts: Sequence[Attempt] = (),
    ) -> None:
        super().__init__(message)
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
