"""`SpeechClient`: an `openai.AsyncOpenAI` whose requests are served by the engine.

Its http client runs over `SpeechTransport`, so everything openai does (parameters,
`extra_body`, results, streamed and raw responses, `with_options`) is openai's own; the
client only validates its configuration, builds the engine once, and adds what openai has
no word for (`deployment`, `attempts`, `health()`, `force_open()`, `reset()`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from os import PathLike
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

import anyio
import httpx2
from anyio.abc import TaskGroup
from openai import NOT_GIVEN, AsyncOpenAI, NotGiven
from openai._legacy_response import HttpxBinaryResponseContent
from openai._response import AsyncResponseContextManager, async_to_custom_streamed_response_wrapper
from openai._utils import is_given
from openai.resources.audio import AsyncAudio, AsyncSpeech

from ._config._request import validate_request
from ._config._settings import Settings, load_settings
from ._config._values import Deployment, Pool
from ._core._breaker import BreakerPolicy
from ._core._retry import RetryPolicy
from ._engine._engine import SpeechEngine
from ._engine._http import Transport
from ._engine._pool import LiveDeployment, LivePool
from ._engine._transport import SpeechTransport
from ._exceptions import UnknownDeploymentError
from ._fleet._shared_state import SharedState
from ._observe._events import EventHook
from ._observe._health import ClientHealth, HealthLog, take_snapshot
from ._observe._logging import log_event, log_extra, logger
from ._response import SpeechResponse, StreamedSpeechResponse

__all__ = ["BASE_URL", "PLACEHOLDER_KEY", "SpeechClient"]

PoolLike = Pool | Sequence[Deployment | Mapping[str, Any]] | Mapping[str, Any]
# What openai's own client holds: never a deployment's address or key. Requests never leave
# the process through them; the transport routes each by its `model`.
BASE_URL = "http://resilient-tts.invalid/v1"
PLACEHOLDER_KEY = "resilient-tts-unused"


class SpeechClient(AsyncOpenAI):
    """An `openai.AsyncOpenAI` that fails over across the deployments of each logical model.

    ::

        async with SpeechClient() as client:                  # from RESILIENT_TTS_* variables
            speech = await client.audio.speech.create(model="kokoro", voice="alloy", input="Hi")

        SpeechClient(models={"kokoro": [Deployment(name="a", base_url=..., model="kokoro")]})
        SpeechClient(config_file="tts.toml", first_byte_timeout=3)

    Arguments beat ``RESILIENT_TTS_*`` variables, which beat `.env`, which beats the settings
    file. Bad configuration raises `ConfigurationError` here, never later. Anything that
    takes an `AsyncOpenAI` takes it; anything that takes only an http client takes
    `http_client`. openai's own retries stay off: the engine decides every retry.
    """

    def __init__(
        self,
        models: Mapping[str, PoolLike] | None = None,
        *,
        config_file: str | PathLike[str] | None = None,
        deadline: float | None = None,
        attempt_timeout: float | None = None,
        first_byte_timeout: float | None = None,
        stall_timeout: float | None = None,
        breaker_open_seconds: float | None = None,
        sample_rate: int | None = None,
        transport: Transport | None = None,
        redis_url: str | None = None,
        breaker: BreakerPolicy | None = None,
        retry: RetryPolicy | None = None,
        hooks: Sequence[EventHook] = (),
    ) -> None:
        given: dict[str, Any] = {
            "config_file": config_file,
            "deadline": deadline,
            "attempt_timeout": attempt_timeout,
            "first_byte_timeout": first_byte_timeout,
            "stall_timeout": stall_timeout,
            "breaker_open_seconds": breaker_open_seconds,
            "sample_rate": sample_rate,
            "transport": transport,
            "redis_url": redis_url,
        }
        overrides = {key: value for key, value in given.items() if value is not None}
        if isinstance(models, Mapping):
            overrides["models"] = {name: _as_pool(pool) for name, pool in models.items()}
        elif models is not None:  # pydantic says what is wrong with it
            overrides["models"] = models
        settings: Settings = load_settings(**overrides)
        self._health_log = HealthLog()
        # The health log and the log lines see every event first; the caller's hooks follow.
        engine = SpeechEngine(
            settings,
            breaker=breaker or BreakerPolicy(),
            retry=retry or RetryPolicy(),
            hooks=(self._health_log, log_event, *hooks),
        )
        self._engine = engine
        self._background: TaskGroup | None = None
        self._init_openai(
            httpx2.AsyncClient(transport=SpeechTransport(engine), timeout=None),
            timeout=None,
            max_retries=0,
            default_headers=None,
            default_query=None,
        )

    def _init_openai(
        self,
        http_client: httpx2.AsyncClient,
        *,
        timeout: float | httpx2.Timeout | None,
        max_retries: int,
        default_headers: Mapping[str, str] | None,
        default_query: Mapping[str, object] | None,
    ) -> None:
        AsyncOpenAI.__init__(
            self,
            api_key=PLACEHOLDER_KEY,
            organization=None,
            project=None,
            base_url=BASE_URL,
            timeout=timeout,
            max_retries=max_retries,
            default_headers=default_headers,
            default_query=default_query,
            http_client=http_client,
        )
        # openai computes its platform headers in a worker thread on a client's first
        # request; once per process is enough (and trio's virtual clock has no thread to
        # jump past in tests).
        self._platform = _platform()

    @property
    def settings(self) -> Settings:
        return self._engine.settings

    @property
    def http_client(self) -> httpx2.AsyncClient:
        """The `httpx2.AsyncClient` over this client's engine, for code that builds its own
        `AsyncOpenAI` (Pipecat): whatever base URL and key it is given, speech requests are
        served by these pools, and only each deployment's own key goes out. ::

            AsyncOpenAI(api_key="unused", base_url="http://tts/v1", http_client=client.http_client)
        """
        return self._client

    def __repr__(self) -> str:
        models = {
            name: [d.name for d in pool.deployments] for name, pool in self.settings.models.items()
        }
        return f"<SpeechClient models={models}>"

    @functools.cached_property
    def audio(self) -> _Audio:
        return _Audio(self)

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Builds the pools, and opens the task group in which a streamed long text speaks
        its next segment while the caller still receives the current one."""
        self._live_pools()
        group = anyio.create_task_group()
        await group.__aenter__()
        self._background = group
        self._engine.spawn = group.start_soon
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        group, self._background = self._background, None
        try:
            await self.close()
        finally:
            if group is not None:
                self._engine.spawn = None
                group.cancel_scope.cancel()
                await group.__aexit__(None, None, None)

    async def aclose(self) -> None:
        """Closes every connection; requests still running raise `ClientClosedError`.
        The client (and every copy of it) cannot be used afterwards."""
        await self.close()

    def copy(
        self,
        *,
        timeout: float | httpx2.Timeout | NotGiven | None = NOT_GIVEN,
        max_retries: int | NotGiven = NOT_GIVEN,
        default_headers: Mapping[str, str] | None = None,
        set_default_headers: Mapping[str, str] | None = None,
        default_query: Mapping[str, object] | None = None,
        set_default_query: Mapping[str, object] | None = None,
        **_ignored: Any,
    ) -> Self:
        """openai's `copy`/`with_options`: a client with other options, sharing these pools,
        breakers and connections. Base URL and key are not options here: the pools decide."""
        clone = type(self).__new__(type(self))
        clone._engine = self._engine
        clone._health_log = self._health_log
        clone._background = None
        headers = {**self._custom_headers, **(default_headers or {})}
        query = {**self._custom_query, **(default_query or {})}
        clone._init_openai(
            self._client,
            timeout=self.timeout if isinstance(timeout, NotGiven) else timeout,
            max_retries=self.max_retries if isinstance(max_retries, NotGiven) else max_retries,
            default_headers=set_default_headers if set_default_headers is not None else headers,
            default_query=set_default_query if set_default_query is not None else query,
        )
        return clone

    with_options = copy

    # Test and tool access to the engine's pools and fleet state.
    def _live_pools(self) -> dict[str, LivePool]:
        return self._engine.pools()

    @property
    def _shared(self) -> SharedState | None:
        return self._engine.shared

    # -- operating it ---------------------------------------------------------------------

    def health(self) -> ClientHealth:
        """Each pool's deployments: breaker state, open/cool-down times, recent failure rate,
        first-byte latency percentiles and last error. Call it from the event loop.

        ::

            for pool in client.health().pools:
                print(pool.name, pool.available)
        """
        return take_snapshot(self._live_pools(), self._health_log, now=anyio.current_time())

    async def force_open(self, name: str, seconds: float | None = None) -> None:
        """Takes the deployment `name` out of rotation in every pool that has it, for `seconds`
        (default: the breaker policy's `force_open_seconds`, 5 minutes). Requests skip it
        unless every other deployment is unavailable too. Raises `UnknownDeploymentError`.

        ::

            await client.force_open("gpu-a", seconds=600)   # maintenance window
        """
        for deployment in self._deployments_named(name):
            deployment.breaker.force_open(seconds, reason="by the operator")
            open_for = deployment.breaker.ready_in()
            extra = log_extra(deployment.pool, name, breaker_state=deployment.breaker.state.value)
            logger.warning(
                "deployment %r of pool %r forced open by the operator for %.3gs",
                name,
                deployment.pool,
                open_for,
                extra=extra,
            )

    async def reset(self, name: str) -> None:
        """Closes the breaker of deployment `name` in every pool that has it, and forgets its
        failures and any ``Retry-After`` cool-down. Raises `UnknownDeploymentError`."""
        for deployment in self._deployments_named(name):
            deployment.breaker.reset()
            extra = log_extra(deployment.pool, name, breaker_state=deployment.breaker.state.value)
            logger.info(
                "deployment %r of pool %r reset by the operator", name, deployment.pool, extra=extra
            )

    @classmethod
    def from_litellm_config(cls, path: str | PathLike[str], **kwargs: Any) -> SpeechClient:
        """A client configured from a LiteLLM proxy config file (YAML), for migrating.

        `model_list` entries become deployments; ``router_settings.fallbacks`` become the
        deployments that follow a model's own in its pool; ``os.environ/VAR`` keys are read
        now. What cannot be translated is logged as a WARNING (see `import_litellm_config`
        for the full report). `kwargs` are `SpeechClient` arguments and win over the file.

        ::

            client = SpeechClient.from_litellm_config("litellm_config.yaml")
        """
        from ._config._litellm import import_litellm_config

        imported = import_litellm_config(path)
        for warning in imported.warnings:
            logger.warning("LiteLLM config %s: %s", path, warning, extra=log_extra(None, None))
        return cls(**{**imported.client_arguments(), **kwargs})

    def _deployments_named(self, name: str) -> list[LiveDeployment]:
        pools = self._live_pools()
        found = [d for pool in pools.values() for d in pool.deployments if d.name == name]
        if not found:
            known = dict.fromkeys(d.name for pool in pools.values() for d in pool.deployments)
            raise UnknownDeploymentError(name, list(known))
        return found


@functools.cache
def _platform() -> Any:
    from openai._base_client import get_platform

    return get_platform()


def _as_pool(value: PoolLike) -> Any:
    """Accepts a Pool, a list of deployments, or a mapping; pydantic validates the rest."""
    if (
        isinstance(value, Pool | Mapping)
        or not isinstance(value, Sequence)
        or isinstance(value, str)
    ):
        return value  # a str is a Sequence too, but never a list of deployments
    return {"deployments": list(value)}


_P = ParamSpec("_P")
_R = TypeVar("_R")
_S = TypeVar("_S")


def _parameters_of(
    _: Callable[Concatenate[Any, _P], object],
) -> Callable[[Callable[..., _R]], Callable[Concatenate[_S, _P], _R]]:
    """Types a ``(self, **kwargs)`` method with the parameters of openai's own, for callers'
    type checkers: the body hands them on to it unchanged."""
    return lambda method: method


class _Speech(AsyncSpeech):
    """``client.audio.speech``: openai's, with `create` returning a `SpeechResponse` and
    `with_streaming_response.create` a `StreamedSpeechResponse`."""

    @_parameters_of(AsyncSpeech.create)
    async def create(self, **kwargs: Any) -> SpeechResponse:
        """Synthesizes `input` with the first healthy deployment of `model`.

        Takes the parameters of `openai.AsyncOpenAI().audio.speech.create`; `timeout` is the
        deadline for the whole request, all attempts included. Raises `InvalidRequestError`
        (an `openai.BadRequestError`) before any network call for a bad request, and
        `AllDeploymentsFailedError` (an `openai.APIStatusError`, with every attempt) when no
        deployment could deliver.

        A text longer than some deployment's `max_input_chars` is spoken in segments, each
        with its own failover, within the one deadline, and joined into one file.
        """
        self._check(kwargs)
        result = await super().create(**kwargs)
        # with_raw_response wraps this method too: only a plain result becomes ours.
        if type(result) is HttpxBinaryResponseContent:
            return SpeechResponse(result.response)
        return result  # type: ignore[return-value]

    @functools.cached_property
    def with_streaming_response(self) -> _StreamingSpeech:  # type: ignore[override]
        """Same parameters as `create`; use it with ``async with``::

            async with client.audio.speech.with_streaming_response.create(
                model="kokoro", voice="alloy", input=text, response_format="pcm"
            ) as response:
                async for chunk in response.iter_bytes():
                    play(chunk)

        Entering the block fails over until a deployment sends its first audio byte (raising
        `AllDeploymentsFailedError` if none does); until the first byte reaches the caller, a
        failed body fails over too. After that a failure raises `StreamInterruptedError`.
        """
        return _StreamingSpeech(self)

    async def _checked_create(self, **kwargs: Any) -> Any:
        self._check(kwargs)
        return await super().create(**kwargs)

    def _check(self, kwargs: Mapping[str, Any]) -> None:
        """A bad parameter is our `InvalidRequestError` here, before openai builds the request
        (where an odd `extra_body` or `timeout` would be a bare `TypeError`), and a closed
        client's `ClientClosedError` before httpx2's bare `RuntimeError`."""
        client: SpeechClient = self._client  # type: ignore[assignment]
        client._live_pools()  # refuses when closed
        if not kwargs.keys() >= _SPEECH_REQUIRED:
            return  # openai's own TypeError names the missing argument
        given = {name: value for name, value in kwargs.items() if is_given(value)}
        headers = given.get("extra_headers")
        if isinstance(headers, Mapping):  # without openai's own (its streaming wrapper's)
            given["extra_headers"] = {
                name: value
                for name, value in headers.items()
                if not (isinstance(name, str) and name.lower().startswith(_OPENAI_OWN_HEADERS))
            }
        validate_request(
            known_models=client.settings.models.keys(),
            response_format=given.get("response_format", "mp3"),
            **{name: given.get(name) for name in _SPEECH_CHECKED},
        )


# openai's internal headers: its streaming wrapper's (one holds a class), its bookkeeping's.
_OPENAI_OWN_HEADERS = ("x-stainless-", "____stainless")
_SPEECH_REQUIRED = frozenset(("model", "voice", "input"))
_SPEECH_CHECKED = (
    *_SPEECH_REQUIRED,
    *("speed", "instructions", "stream_format", "extra_headers", "extra_body", "timeout"),
)


class _StreamingSpeech:
    """``client.audio.speech.with_streaming_response``."""

    def __init__(self, speech: _Speech) -> None:
        self._create = async_to_custom_streamed_response_wrapper(
            speech._checked_create, StreamedSpeechResponse
        )

    @_parameters_of(AsyncSpeech.create)
    def create(self, **kwargs: Any) -> AsyncResponseContextManager[StreamedSpeechResponse]:
        return self._create(**kwargs)


class _Audio(AsyncAudio):
    @functools.cached_property
    def speech(self) -> _Speech:
        return _Speech(self._client)
