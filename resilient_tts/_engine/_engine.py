"""The engine: one entry for a whole request, short or long, whole or streamed.

`SpeechEngine.synthesize(request)` returns the finished audio (`Synthesized`);
`SpeechEngine.stream(request)` returns a `SpeechStream` to open and read. Either decides
short or long text, runs failover, the attempts and normalization. `SpeechTransport` calls
them; nothing above the engine knows about pools, attempts or audio.

The engine has an explicit lifecycle, as httpx's client has: built lazily inside the event
loop on first use (breakers read its clock; an aiohttp session belongs to one loop), then
closed once. Closing cancels the requests still running (each then raises
`ClientClosedError`), releases the streams still open, and closes every connection; every
close runs even when another fails. A closed engine refuses new requests.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import replace

import anyio
import httpx2

from .._audio import AudioFormat, NormalizedAudio, encodable_rate, plan
from .._config._request import SpeechRequest
from .._config._settings import Settings
from .._config._values import Timeouts
from .._core._breaker import BreakerPolicy
from .._core._classify import FailureKind, verdict_for
from .._core._records import SpeechSegment, Synthesized
from .._core._retry import RetryPolicy
from .._exceptions import AudioError, ClientClosedError
from .._fleet._shared_state import SharedState, shared_state_from_settings
from .._observe._events import EventHook, RequestScope
from ._attempt import AttemptError, DeploymentRequest, open_audio_stream
from ._failover import run_with_failover
from ._http import build_http_client, choose_transport
from ._long_text import SpeechJob, is_long, synthesize_long
from ._pool import LiveDeployment, LivePool, build_live_pool
from ._streaming import Spawn, SpeechStream

__all__ = ["SpeechEngine"]


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


class SpeechEngine:
    """Pools, breakers, the HTTP client and fleet state for one client (and its copies)."""

    def __init__(
        self,
        settings: Settings,
        *,
        breaker: BreakerPolicy,
        retry: RetryPolicy,
        hooks: Sequence[EventHook],
        clock: Callable[[], float] = anyio.current_time,
    ) -> None:
        self.settings = settings
        self.hooks = tuple(hooks)
        self.clock = clock
        self._breaker_policy = breaker
        self._retry_policy = retry
        self._state = _State.UNOPENED
        self._pools: dict[str, LivePool] = {}
        self._http: httpx2.AsyncClient | None = None
        # Breaker state shared with a fleet through Redis (RESILIENT_TTS_REDIS_URL), or None.
        self.shared: SharedState | None = shared_state_from_settings(settings)
        self._running: set[anyio.CancelScope] = set()
        self._streams: set[SpeechStream] = set()
        # Set by the client's ``async with``: where a streamed long text speaks ahead.
        self.spawn: Spawn | None = None

    @property
    def is_closed(self) -> bool:
        return self._state is _State.CLOSED

    # -- building, on first use ------------------------------------------------------------

    def pools(self) -> dict[str, LivePool]:
        if self._state is _State.CLOSED:
            raise ClientClosedError("this SpeechClient was closed; build a new one")
        if self._state is _State.UNOPENED:
            self._pools = self._build_pools()
            self._state = _State.OPENED
        return self._pools

    def _build_pools(self) -> dict[str, LivePool]:
        s = self.settings
        defaults = Timeouts(s.deadline, s.attempt_timeout, s.first_byte_timeout, s.stall_timeout)
        # An explicit setting (argument, variable, file) beats BreakerPolicy's own.
        open_seconds = (
            s.breaker_open_seconds
            if "breaker_open_seconds" in s.model_fields_set
            else self._breaker_policy.open_seconds
        )
        return {
            name: build_live_pool(
                name,
                pool,
                defaults=defaults,
                breaker_open_seconds=open_seconds,
                breaker_policy=self._breaker_policy,
                retry=self._retry_policy,
                clock=self.clock,
                hooks=self.hooks,
                shared=self.shared,
            )
            for name, pool in s.models.items()
        }

    def http(self) -> httpx2.AsyncClient:
        if self._http is None:
            self.pools()  # refuses when closed
            self._http = build_http_client(choose_transport(self.settings.transport))
        return self._http

    def job(self, request: SpeechRequest) -> SpeechJob:
        pool = self.pools()[request.model]
        rate = encodable_rate(AudioFormat(request.response_format), self.settings.sample_rate)
        timeout = request.timeout if request.timeout is not None else pool.deadline
        return SpeechJob(pool, request, self.http, rate, self.clock() + timeout, self.clock)

    # -- a whole request -----------------------------------------------------------------

    async def synthesize(self, request: SpeechRequest) -> Synthesized:
        """The whole audio of `request`, in the asked format; raises the story otherwise."""
        job = self.job(request)
        with self._request_scope() as scope:
            with RequestScope(
                self.hooks, pool=request.model, input_chars=len(request.input)
            ) as story:
                if is_long(request.input, job.pool):
                    # Some deployment cannot take it in one request: segment by segment.
                    result = await synthesize_long(job)
                else:
                    result = await self._synthesize_short(job)
                story.served(result.deployment, result.attempts)
            return result
        raise ClientClosedError(f"the client was closed while {scope!r} was running")

    async def _synthesize_short(self, job: SpeechJob) -> Synthesized:
        request = job.request
        http = self.http()

        async def fetch(
            deployment: LiveDeployment, sent: DeploymentRequest
        ) -> tuple[NormalizedAudio, str | None]:
            async with open_audio_stream(
                http, deployment.endpoint, request, sent, deployment.timeouts
            ) as stream:
                body = await stream.read_all()
            audio = await normalize_body(body, sent, deployment, request, job.rate)
            return audio, stream.request_id

        served = await run_with_failover(
            job.pool, request, fetch, clock=self.clock, deadline=job.deadline
        )
        # What normalization did (a mislabelled body, a transcode) is told on the attempt that
        # served, next to what adapt_request changed: never silent.
        audio, request_id = served.value
        attempts = served.attempts
        if audio.notes:
            *tried, success = attempts
            adaptations = (*success.adaptations, *audio.notes)
            attempts = (*tried, replace(success, adaptations=adaptations))
        name = served.deployment.name
        return Synthesized(
            audio.content,
            deployment=name,
            attempts=attempts,
            response_format=request.response_format,
            sample_rate=audio.sample_rate,
            duration=audio.duration,
            segments=(SpeechSegment(0, 0, len(request.input), name, audio.duration),),
            request_id=request_id,
        )

    def stream(self, request: SpeechRequest) -> SpeechStream:
        """A stream of `request`'s audio; `await stream.open()` runs failover until the first
        byte, then read it with `next_chunk`, and `release()` it (the transport does)."""
        stream = SpeechStream(
            self.job(request), hooks=self.hooks, spawn=self.spawn, on_release=self._streams.discard
        )
        self._streams.add(stream)
        return stream

    def _request_scope(self) -> _Tracked:
        return _Tracked(self)

    # -- closing ---------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Cancels running requests, releases open streams, closes every connection."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        for scope in list(self._running):
            scope.cancel()
        http, self._http = self._http, None
        shared, self.shared = self.shared, None
        with anyio.CancelScope(shield=True):
            try:
                for stream in list(self._streams):
                    await stream.release(None)
            finally:
                try:
                    if http is not None:
                        with anyio.move_on_after(2.0):
                            await http.aclose()
                finally:
                    if shared is not None:
                        await shared.aclose()  # gives back fleet-wide probe permits; bounded


class _Tracked:
    """A request's cancel scope, known to the engine while it runs so `aclose` can cancel it;
    its ``with`` block swallows only that cancellation (the caller then raises
    `ClientClosedError`)."""

    def __init__(self, engine: SpeechEngine) -> None:
        self._engine = engine
        self._scope = anyio.CancelScope()

    def __enter__(self) -> anyio.CancelScope:
        self._engine._running.add(self._scope)
        return self._scope.__enter__()

    def __exit__(self, *exc_info: object) -> bool:
        self._engine._running.discard(self._scope)
        return bool(self._scope.__exit__(*exc_info))  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return "the request"


async def normalize_body(
    body: bytes,
    sent: DeploymentRequest,
    deployment: LiveDeployment,
    request: SpeechRequest,
    target_rate: int,
) -> NormalizedAudio:
    """A whole body as the caller asked for it; audio that is not usable fails the attempt."""
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
