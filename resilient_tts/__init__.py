"""Resilient text-to-speech for OpenAI-compatible speech endpoints, without a proxy.

from resilient_tts import SpeechClient

async with SpeechClient() as client:
    speech = await client.audio.speech.create(model="kokoro", voice="alloy", input="Hello")
"""

from ._client import SpeechClient
from ._config._litellm import LiteLLMImport, import_litellm_config
from ._config._values import Deployment, Pool
from ._core._breaker import BreakerPolicy, BreakerState
from ._core._classify import FailureKind
from ._core._records import Attempt, AttemptOutcome, SpeechSegment
from ._core._retry import RetryPolicy
from ._exceptions import (
    AllDeploymentsFailedError,
    AudioError,
    ClientClosedError,
    ConfigurationError,
    DeadlineExceededError,
    InvalidRequestError,
    ResilientTTSError,
    StreamInterruptedError,
    UnknownDeploymentError,
)
from ._observe._events import (
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    BreakerTransitioned,
    BudgetExhausted,
    CooldownSet,
    Event,
    EventHook,
    FailedOver,
    HedgeCancelled,
    HedgeStarted,
    RequestFinished,
    RequestStarted,
    SegmentSwitched,
)
from ._observe._health import ClientHealth, DeploymentHealth, PoolHealth
from ._observe._otel import OpenTelemetryHook
from ._response import SpeechResponse, StreamedSpeechResponse
from ._version import __version__ as __version__

__all__ = [
    # the client and what it returns
    "SpeechClient",
    "SpeechResponse",
    "StreamedSpeechResponse",
    "SpeechSegment",
    "Attempt",
    "AttemptOutcome",
    "FailureKind",
    # configuration as Python objects
    "Deployment",
    "Pool",
    "BreakerPolicy",
    "BreakerState",
    "RetryPolicy",
    "import_litellm_config",
    "LiteLLMImport",
    # operating it: events for hooks, OpenTelemetry, health
    "Event",
    "EventHook",
    "RequestStarted",
    "RequestFinished",
    "AttemptStarted",
    "AttemptSucceeded",
    "AttemptFailed",
    "FailedOver",
    "BreakerTransitioned",
    "CooldownSet",
    "BudgetExhausted",
    "HedgeStarted",
    "HedgeCancelled",
    "SegmentSwitched",
    "OpenTelemetryHook",
    "ClientHealth",
    "PoolHealth",
    "DeploymentHealth",
    # errors
    "ResilientTTSError",
    "ConfigurationError",
    "InvalidRequestError",
    "AllDeploymentsFailedError",
    "DeadlineExceededError",
    "StreamInterruptedError",
    "AudioError",
    "UnknownDeploymentError",
    "ClientClosedError",
]

# Tracebacks and docs say `resilient_tts.SpeechClient`, not `resilient_tts._client.SpeechClient`.
for _name in __all__:
    _object = globals()[_name]
    if getattr(_object, "__module__", "").startswith("resilient_tts._"):
        _object.__module__ = __name__
del _name, _object
