"""`SpeechClient`: the openai SDK's `audio.speech` surface, with failover underneath."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from os import PathLike
from types import TracebackType
from typing import Any, Literal

import anyio

from ._audio import AudioFormat, NormalizedAudio, encodable_rate, plan
from ._config._request import SpeechRequest, validate_request
from ._config._settings import Settings, load_settings
from ._config._values import Deployment, Pool, Timeouts
from ._core._breaker import BreakerPolicy
from ._core._classify import FailureKind, verdict_for
from ._core._records import SpeechSegment
from ._core._retry import RetryPolicy
from ._engine._attempt import AttemptError, DeploymentRequest, open_audio_stream
from ._engine._failover import run_with_failover
from ._engine._http import Transport, build_openai_client, choose_transport
from ._engine._long_text import SpeechJob, is_long, synthesize_long
from ._engine._pool import LiveDeployment, LivePool, build_live_pool
from ._engine._streaming import SpeechStreamContext, StreamedSpeechResponse
from ._exceptions import AudioError, ClientClosedError, InvalidRequestError, UnknownDeploymentError
from ._fleet._shared_state import shared_state_from_settings
from ._observe._events import EventHook, RequestScope
from ._observe._health import ClientHealth, HealthLog, take_snapshot
from ._observe._logging import log_event, log_extra, logger
from ._response import SpeechResponse

__all__ = ["SpeechClient"]

PoolLike = Pool | Sequence[Deployment | Mapping[str, Any]] | Mapping[str, Any]


class SpeechClient:
    """A drop-in for `openai.AsyncOpenAI().audio.speech` that fails over across deployments.

    ::

        async with SpeechClient() as client:                  # from RESILIENT_TTS_* variables
            speech = await client.audio.speech.create(model="kokoro", voice="alloy", input="Hi")

        SpeechClient(models={"kokoro": [Deployment(name="a", base_url=..., model="kokoro")]})
        SpeechClient(config_file="tts.toml", first_byte_timeout=3)

    Arguments beat ``RESILIENT_TTS_*`` variables, which beat `.env`, which beats the settings
    file. Bad configuration raises `ConfigurationError` here, never later.
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
        self.settings: Settings = load_settings(**overrides)
        self._breaker_policy = breaker or BreakerPolicy()
        self._retry_policy = retry or RetryPolicy()
        self._health_log = HealthLog()
        # The health log and the log lines see every event first; the caller's hooks follow.
        self._hooks: tuple[EventHook, ...] = (self._health_log, log_event, *hooks)
        self._pools: dict[str, LivePool] | None = None
        # Breaker state shared with a fleet through Redis (RESILIENT_TTS_REDIS_URL), or None.
        self._shared = shared_state_from_settings(self.settings)
        self._closed = False
        self.audio = _Audio(self)

    def __repr__(self) -> str:
        models = {
            name: [d.name for d in pool.deployments] for name, pool in self.settings.models.items()
        }
        return f"<SpeechClient models={models}>"

    async def __aenter__(self) -> SpeechClient:
        self._live_pools()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes every connection. The client cannot be used afterwards."""
        self._closed = True
        pools, self._pools = self._pools, None
        for pool in (pools or {}).values():
            for deployment in pool.deployments:
                client, deployment.openai = deployment.openai, None
                if client is not None:
                    with anyio.CancelScope(shield=True):
                        await client.close()
        shared, self._shared = self._shared, None
        if shared is not None:
            await shared.aclose()  # gives back fleet-wide probe permits; bounded, shielded

    def _live_pools(self) -> dict[str, LivePool]:
        """Built on first use inside the event loop: breakers and budgets read its clock."""
        if self._closed:
            raise ClientClosedError("this SpeechClient was closed; build a new one")
        if self._pools is None:
            s = self.settings
            defaults = Timeouts(
                s.deadline, s.attempt_timeout, s.first_byte_timeout, s.stall_timeout
            )
            self._pools = {
                name: build_live_pool(
                    name,
                    pool,
                    defaults=defaults,
                    # An explicit setting (argument, variable, file) beats BreakerPolicy's own.
                    breaker_open_seconds=(
                        s.breaker_open_seconds
                        if "breaker_open_seconds" in s.model_fields_set
                        else self._breaker_policy.open_seconds
                    ),
                    breaker_policy=self._breaker_policy,
                    retry=self._retry_policy,
                    clock=anyio.current_time,
                    hooks=self._hooks,
                    shared=self._shared,
                )
                for name, pool in s.models.items()
            }
        return self._pools

    def _openai_for(self, deployment: LiveDeployment) -> Any:
        if deployment.openai is None:
            kind = choose_transport(self.settings.transport)
            deployment.openai = build_openai_client(deployment.config, transport=kind)
        return deployment.openai

    async def _create(self, request: SpeechRequest) -> SpeechResponse:
        pool = self._live_pools()[request.model]
        if is_long(request.input, pool):
            # Some deployment cannot take it in one request: segment by segment (SPEC §5).
            with RequestScope(
                self._hooks, pool=request.model, input_chars=len(request.input)
            ) as scope:
                result = await synthesize_long(self._speech_job(request, pool))
                scope.served(result.deployment, result.attempts)
            return SpeechResponse.of(result)
        target_rate = self.settings.sample_rate

        async def fetch(deployment: LiveDeployment, sent: DeploymentRequest) -> NormalizedAudio:
            client = self._openai_for(deployment)
            async with open_audio_stream(
                client, deployment.config, request, sent, deployment.timeouts
            ) as stream:
                body = await stream.read_all()
            return await _normalize(body, sent, deployment, request, target_rate)

        with RequestScope(self._hooks, pool=request.model, input_chars=len(request.input)) as scope:
            served = await run_with_failover(pool, request, fetch, clock=anyio.current_time)
            # What normalization did (a mislabelled body, a transcode) is told on the attempt that
            # served, next to what adapt_request changed: never silent.
            attempts = served.attempts
            if served.value.notes:
                *tried, success = attempts
                adaptations = (*success.adaptations, *served.value.notes)
                attempts = (*tried, replace(success, adaptations=adaptations))
            scope.served(served.deployment.name, attempts)
        audio = served.value
        return SpeechResponse(
            audio.content,
            deployment=served.deployment.name,
            attempts=attempts,
            response_format=request.response_format,
            sample_rate=audio.sample_rate,
            duration=audio.duration,
            segments=(
                SpeechSegment(0, 0, len(request.input), served.deployment.name, audio.duration),
            ),
        )

    def _stream(self, request: SpeechRequest) -> SpeechStreamContext:
        pool = self._live_pools()[request.model]
        return SpeechStreamContext(
            StreamedSpeechResponse(self._speech_job(request, pool), hooks=self._hooks)
        )

    def _speech_job(self, request: SpeechRequest, pool: LivePool) -> SpeechJob:
        rate = encodable_rate(AudioFormat(request.response_format), self.settings.sample_rate)
        return SpeechJob(pool, request, self._openai_for, rate)

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


async def _normalize(
    body: bytes,
    sent: DeploymentRequest,
    deployment: LiveDeployment,
    request: SpeechRequest,
    target_rate: int,
) -> NormalizedAudio:
    try:
        # A sniff and a header walk: cheap, and enough to reject most bodies that are not audio.
        conversion = plan(
            body,
            declared=AudioFormat(sent.asked_format),
            declared_rate=deployment.config.sample_rate,
            target=AudioFormat(request.response_format),
            target_rate=target_rate,
        )
        # A pass-through or a short transcode stays on the event loop; longer transcodes (100 ms
        # and more for a few seconds of mp3) go to a worker thread so other requests carry on.
        if conversion.is_brief:
            return conversion.run()
        return await anyio.to_thread.run_sync(conversion.run)
    except AudioError as exc:
        raise AttemptError(
            verdict_for(FailureKind.NOT_AUDIO, f"HTTP 200 but not usable audio: {exc}")
        ) from exc


def _as_pool(value: PoolLike) -> Any:
    """Accepts a Pool, a list of deployments, or a mapping; pydantic validates the rest."""
    if (
        isinstance(value, Pool | Mapping)
        or not isinstance(value, Sequence)
        or isinstance(value, str)
    ):
        return value  # a str is a Sequence too, but never a list of deployments
    return {"deployments": list(value)}


def _given(value: Any) -> Any:
    """openai's `omit` / `NOT_GIVEN` mean "not given", as they do in the SDK."""
    return None if type(value).__name__ in ("Omit", "NotGiven") else value


class _Speech:
    """``client.audio.speech``: `create`, and `with_streaming_response.create`."""

    def __init__(self, client: SpeechClient) -> None:
        self._client = client
        self.with_streaming_response = _StreamingSpeech(self)

    async def create(
        self,
        *,
        input: str,
        model: str,
        voice: str,
        instructions: str | Any | None = None,
        response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] | Any = "mp3",
        speed: float | Any | None = None,
        stream_format: Literal["sse", "audio"] | Any | None = None,
        extra_headers: Mapping[str, str] | None = None,
        extra_query: Mapping[str, object] | None = None,
        extra_body: Mapping[str, object] | None = None,
        timeout: float | Any | None = None,  # noqa: ASYNC109 - the openai SDK's parameter: the deadline
    ) -> SpeechResponse:
        """Synthesizes `input` with the first healthy deployment of `model`.

        Takes the parameters of `openai.AsyncOpenAI().audio.speech.create`; `timeout` is the
        deadline for the whole request, all attempts included. Raises `InvalidRequestError`
        before any network call for a bad request, `AllDeploymentsFailedError` (with every
        attempt) when no deployment could deliver.

        A text longer than some deployment's `max_input_chars` is spoken in segments, each
        with its own failover and deadline, and joined into one file (see `segments`).
        """
        request = self._validate(
            input=input,
            model=model,
            voice=voice,
            instructions=instructions,
            response_format=response_format,
            speed=speed,
            stream_format=stream_format,
            extra_headers=extra_headers,
            extra_query=extra_query,
            extra_body=extra_body,
            timeout=timeout,
        )
        return await self._client._create(request)

    def _validate(
        self,
        *,
        input: object,
        model: object,
        voice: object,
        instructions: object,
        response_format: object,
        speed: object,
        stream_format: object,
        extra_headers: object,
        extra_query: object,
        extra_body: object,
        timeout: object,
    ) -> SpeechRequest:
        if extra_query:
            raise InvalidRequestError(
                "extra_query is not supported: deployments differ; use extra_body"
            )
        return validate_request(
            known_models=self._client.settings.models.keys(),
            model=model,
            voice=voice,
            input=input,
            response_format="mp3" if _given(response_format) is None else response_format,
            speed=_given(speed),
            instructions=_given(instructions),
            stream_format=_given(stream_format),
            extra_headers=extra_headers,
            extra_body=extra_body,
            timeout=_given(timeout),
        )


class _StreamingSpeech:
    """``client.audio.speech.with_streaming_response``, as in the openai SDK."""

    def __init__(self, speech: _Speech) -> None:
        self._speech = speech

    def create(
        self,
        *,
        input: str,
        model: str,
        voice: str,
        instructions: str | Any | None = None,
        response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] | Any = "mp3",
        speed: float | Any | None = None,
        stream_format: Literal["sse", "audio"] | Any | None = None,
        extra_headers: Mapping[str, str] | None = None,
        extra_query: Mapping[str, object] | None = None,
        extra_body: Mapping[str, object] | None = None,
        timeout: float | Any | None = None,
    ) -> SpeechStreamContext:
        """Same parameters as `create`; use it with ``async with``::

            async with client.audio.speech.with_streaming_response.create(
                model="kokoro", voice="alloy", input=text, response_format="pcm"
            ) as response:
                async for chunk in response.iter_bytes():
                    play(chunk)

        Entering the block fails over until a deployment sends its first audio byte (raising
        `AllDeploymentsFailedError` if none does); until the first byte reaches the caller, a
        failed body fails over too. After that a failure raises `StreamInterruptedError`.
        `timeout` bounds the failover before the first byte; the body then only has to keep
        coming (the stall timeout). `InvalidRequestError` is raised here, at once.
        """
        request = self._speech._validate(
            input=input,
            model=model,
            voice=voice,
            instructions=instructions,
            response_format=response_format,
            speed=speed,
            stream_format=stream_format,
            extra_headers=extra_headers,
            extra_query=extra_query,
            extra_body=extra_body,
            timeout=timeout,
        )
        return self._speech._client._stream(request)


class _Audio:
    def __init__(self, client: SpeechClient) -> None:
        self.speech = _Speech(client)
