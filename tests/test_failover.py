"""SPEC §4 over real loopback sockets: every row of the failover table, and the cases around it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from resilient_tts import (
    AllDeploymentsFailedError,
    AttemptOutcome,
    BreakerPolicy,
    BreakerState,
    DeadlineExceededError,
    FailureKind,
    InvalidRequestError,
    SpeechClient,
    SpeechResponse,
)
from resilient_tts.testing import FakeSpeechServer, Fault
from tests.helpers import MOCK_CLOCK, client_for, speak

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def two_servers(primary: Fault) -> AsyncIterator[tuple[FakeSpeechServer, FakeSpeechServer]]:
    async with (
        FakeSpeechServer(name="primary", fault=primary) as a,
        FakeSpeechServer(name="backup") as b,
    ):
        yield a, b


def breaker_state(client: SpeechClient, name: str) -> BreakerState:
    return (
        client._live_pools()["kokoro"]
        .deployments[[d.name for d in client._live_pools()["kokoro"].deployments].index(name)]
        .breaker.state
    )


def kinds(speech_or_error: SpeechResponse | AllDeploymentsFailedError) -> list[str]:
    attempts = speech_or_error.attempts
    return [f"{a.deployment}:{a.kind.value if a.kind else a.outcome.value}" for a in attempts]


async def test_healthy_primary_serves() -> None:
    """A healthy first deployment serves; the result says who answered and how."""
    async with two_servers(Fault.ok()) as (a, b), client_for([a, b]) as client:
        speech = await speak(client)
    assert speech.deployment == "primary"
    assert [x.outcome for x in speech.attempts] == [AttemptOutcome.SUCCESS]
    assert speech.content.startswith(b"RIFF")
    assert (a.hits, b.hits) == (1, 0)


async def test_connection_refused_fails_over_at_once_and_counts_against_the_breaker() -> None:
    """Refused: no retry on the same deployment, the next one serves, the breaker records it."""
    async with (
        two_servers(Fault.refuse()) as (a, b),
        client_for([a, b], breaker=BreakerPolicy(consecutive_failures=2)) as client,
    ):
        first = await speak(client)
        await speak(client)
        third = await speak(client)
    assert first.deployment == "backup"
    assert kinds(first) == ["primary:connect", "backup:success"]
    # Two refusals trip the breaker: the third request does not try the dead port at all.
    assert kinds(third) == ["primary:skipped", "backup:success"]
    assert b.hits == 3


async def test_reset_before_headers_is_retried_once_then_fails_over() -> None:
    """A connection reset before the headers gets one more try, then the next deployment."""
    async with two_servers(Fault.reset()) as (a, b), client_for([a, b]) as client:
        speech = await speak(client)
    assert kinds(speech) == ["primary:reset", "primary:reset", "backup:success"]
    assert a.hits == 2


async def test_reset_once_then_recovered_is_served_by_the_same_deployment() -> None:
    """One reset, then the retry succeeds on the same deployment."""
    async with (
        two_servers(Fault.fail_times(1, Fault.reset())) as (a, b),
        client_for([a, b]) as client,
    ):
        speech = await speak(client)
    assert speech.deployment == "primary"
    assert kinds(speech) == ["primary:reset", "primary:success"]


@pytest.mark.parametrize("code", [500, 502, 503, 504])
async def test_5xx_without_hint_is_retried_once_with_backoff_then_fails_over(code: int) -> None:
    """500/502/503/504 without a wait hint: one retry on the same deployment, then failover."""
    async with two_servers(Fault.status(code)) as (a, b), client_for([a, b]) as client:
        speech = await speak(client)
    assert kinds(speech) == ["primary:server_error", "primary:server_error", "backup:success"]
    assert speech.attempts[0].status_code == code
    assert a.hits == 2


@pytest.mark.parametrize("anyio_backend", [MOCK_CLOCK])
async def test_first_byte_timeout_fails_over() -> None:
    """No first byte within the first-byte timeout: on to the next deployment, no retry."""
    async with (
        two_servers(Fault.slow_first_byte(30)) as (a, b),
        client_for([a, b], first_byte_timeout=2) as client,
    ):
        started = anyio.current_time()
        speech = await speak(client)
        elapsed = anyio.current_time() - started
    assert kinds(speech) == ["primary:first_byte_timeout", "backup:success"]
    assert 2 <= elapsed < 3


@pytest.mark.parametrize("anyio_backend", [MOCK_CLOCK])
async def test_hang_is_bounded_by_the_first_byte_timeout() -> None:
    """A server that never answers costs the first-byte timeout, not the 6000 s LiteLLM waits."""
    async with (
        two_servers(Fault.hang()) as (a, b),
        client_for([a, b], first_byte_timeout=2) as client,
    ):
        started = anyio.current_time()
        speech = await speak(client)
    assert speech.deployment == "backup"
    assert anyio.current_time() - started < 3


@pytest.mark.parametrize("anyio_backend", [MOCK_CLOCK])
async def test_stall_inside_the_body_fails_over() -> None:
    """Silence inside the body longer than the stall timeout fails the attempt over."""
    async with (
        two_servers(Fault.stall(after_bytes=100)) as (a, b),
        client_for([a, b], stall_timeout=1) as client,
    ):
        speech = await speak(client)
    assert kinds(speech) == ["primary:stall", "backup:success"]


async def test_body_shorter_than_content_length_is_never_a_success() -> None:
    """A body cut before its Content-Length fails over instead of returning a truncated clip."""
    async with two_servers(Fault.cut(after_bytes=1000)) as (a, b), client_for([a, b]) as client:
        speech = await speak(client)
    assert kinds(speech) == ["primary:short_body", "backup:success"]
    assert len(speech.content) > 1000


@pytest.mark.parametrize("kind", ["json", "html", "empty"])
async def test_200_that_is_not_audio_fails_over(kind: str) -> None:
    """A 200 with a JSON or HTML error page, or an empty body, is a failure."""
    async with two_servers(Fault.not_audio(kind)) as (a, b), client_for([a, b]) as client:  # type: ignore[arg-type]
        speech = await speak(client)
    assert kinds(speech) == ["primary:not_audio", "backup:success"]


@pytest.mark.parametrize(
    "fault",
    [
        Fault.unauthorized(),
        Fault.status(403),
        Fault.not_found(),
        Fault.insufficient_quota(),
        Fault.model_not_found(),
    ],
    ids=["401", "403", "404", "insufficient_quota", "model-unknown"],
)
async def test_misconfigured_deployment_is_forced_open(
    fault: Fault, caplog: pytest.LogCaptureFixture
) -> None:
    """401/403/404/quota/unknown model: failover at once, a long open, and a loud log line."""
    async with two_servers(fault) as (a, b), client_for([a, b]) as client:
        first = await speak(client)
        second = await speak(client)
        assert breaker_state(client, "primary") is BreakerState.OPEN
    assert kinds(first) == ["primary:deployment_broken", "backup:success"]
    assert kinds(second) == ["primary:skipped", "backup:success"]
    assert a.hits == 1
    assert any(r.levelname == "ERROR" and "misconfigured" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "fault", [Fault.unsupported_voice(), Fault.unsupported_format()], ids=["voice", "format"]
)
async def test_deployment_lacking_a_voice_or_format_fails_over_without_breaker_failure(
    fault: Fault,
) -> None:
    """A 400/422 for a voice or format this deployment lacks: next deployment, breaker untouched."""
    async with (
        two_servers(fault) as (a, b),
        client_for([a, b], breaker=BreakerPolicy(consecutive_failures=1)) as client,
    ):
        speech = await speak(client)
        assert breaker_state(client, "primary") is BreakerState.CLOSED
    assert kinds(speech) == ["primary:unsupported", "backup:success"]


@pytest.mark.parametrize("anyio_backend", [MOCK_CLOCK])
async def test_retry_after_fails_over_at_once_and_cools_the_deployment_down() -> None:
    """429 with Retry-After: failover at once, no breaker failure, a rest for the hinted time."""
    async with (
        two_servers(Fault.status(429, retry_after=5)) as (a, b),
        client_for([a, b]) as client,
    ):
        first = await speak(client)
        during = await speak(client)
        a.set_fault(Fault.ok())
        await anyio.sleep(5.1)
        after = await speak(client)
        assert breaker_state(client, "primary") is BreakerState.CLOSED
    assert kinds(first) == ["primary:rate_limited", "backup:success"]
    assert kinds(during) == ["primary:skipped", "backup:success"]
    assert after.deployment == "primary"


@pytest.mark.parametrize("anyio_backend", [MOCK_CLOCK])
@pytest.mark.parametrize("header", ["retry_after", "retry_after_ms", "retry_after_date"])
async def test_retry_after_is_waited_for_only_when_nowhere_else_to_go(header: str) -> None:
    """Alone in its pool, a 503 with a hint that fits the deadline is waited for, as a floor."""
    options: dict[str, Any] = (
        {"retry_after": 3.0} if header != "retry_after_ms" else {"retry_after_ms": 3000.0}
    )
    fault = Fault.status(503, retry_after_date=header == "retry_after_date", **options)
    async with (
        FakeSpeechServer(name="only", fault=Fault.fail_times(1, fault)) as a,
        client_for([a]) as client,
    ):
        started = anyio.current_time()
        speech = await speak(client)
        waited = anyio.current_time() - started
    assert kinds(speech) == ["only:rate_limited", "only:success"]
    assert waited >= 2.0  # an HTTP-date has one-second resolution; never shortened by jitter


@pytest.mark.parametrize("anyio_backend", [MOCK_CLOCK])
async def test_retry_after_longer_than_the_deadline_is_not_waited_for() -> None:
    """A hint that does not fit the deadline fails at once instead of sleeping past it."""
    async with (
        FakeSpeechServer(name="only", fault=Fault.status(429, retry_after=120)) as a,
        client_for([a], deadline=10) as client,
    ):
        started = anyio.current_time()
        with pytest.raises(AllDeploymentsFailedError) as caught:
            await speak(client)
    assert anyio.current_time() - started < 1
    assert kinds(caught.value) == ["only:rate_limited"]


@pytest.mark.parametrize("anyio_backend", [MOCK_CLOCK])
async def test_429_without_hint_fails_over_or_backs_off_when_alone() -> None:
    """429 without a hint: the next deployment; alone in its pool, a backoff and one more try."""
    async with two_servers(Fault.rate_limited()) as (a, b), client_for([a, b]) as client:
        speech = await speak(client)
        assert breaker_state(client, "primary") is BreakerState.CLOSED
    assert kinds(speech) == ["primary:throttled", "backup:success"]
    async with (
        FakeSpeechServer(name="only", fault=Fault.fail_times(1, Fault.rate_limited())) as a,
        client_for([a]) as client,
    ):
        speech = await speak(client)
    assert kinds(speech) == ["only:throttled", "only:success"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input": ""}, "input"),
        ({"input": "   "}, "input"),
        ({"model": "nope"}, "model='nope'"),
        ({"speed": 9.0}, "speed"),
        ({"speed": 0.1}, "speed"),
        ({"response_format": "ogg"}, "response_format"),
        ({"voice": ""}, "voice"),
        ({"timeout": -1}, "timeout"),
    ],
)
async def test_bad_requests_fail_before_any_network_call(
    kwargs: dict[str, object], message: str
) -> None:
    """Empty text, unknown model, bad speed or format: InvalidRequestError; no server is asked."""
    async with FakeSpeechServer(name="a") as a, client_for([a]) as client:
        args: dict[str, object] = {"model": "kokoro", "voice": "alloy", "input": "Hi"} | kwargs
        with pytest.raises(InvalidRequestError, match=message):
            await client.audio.speech.create(**args)  # type: ignore[arg-type]
    assert a.hits == 0


async def test_every_deployment_down_lists_every_attempt_well_inside_the_deadline() -> None:
    """All down: AllDeploymentsFailedError with each attempt, long before the deadline."""
    async with (
        FakeSpeechServer(name="a", fault=Fault.refuse()) as a,
        FakeSpeechServer(name="b", fault=Fault.status(500)) as b,
        FakeSpeechServer(name="c", fault=Fault.unauthorized()) as c,
        client_for([a, b, c], deadline=30) as client,
    ):
        started = anyio.current_time()
        with pytest.raises(AllDeploymentsFailedError) as caught:
            await speak(client)
        elapsed = anyio.current_time() - started
    error = caught.value
    assert kinds(error) == ["a:connect", "b:server_error", "b:server_error", "c:deployment_broken"]
    assert error.model == "kokoro"
    assert elapsed < 5
    for name in ("a", "b", "c"):
        assert name in str(error)
    assert "sk-" not in str(error)
    assert (
        not isinstance(error.__cause__, Exception)
        or "httpx" not in type(error.__cause__).__module__
    )


@pytest.mark.parametrize("anyio_backend", [MOCK_CLOCK])
async def test_deadline_covers_the_whole_request() -> None:
    """Hanging deployments end in DeadlineExceededError (a TimeoutError) at the deadline."""
    async with (
        FakeSpeechServer(name="a", fault=Fault.hang()) as a,
        FakeSpeechServer(name="b", fault=Fault.hang()) as b,
        client_for([a, b], first_byte_timeout=60, attempt_timeout=60, deadline=4) as client,
    ):
        started = anyio.current_time()
        with pytest.raises(DeadlineExceededError) as caught:
            await speak(client)
    assert isinstance(caught.value, TimeoutError)
    assert 4 <= anyio.current_time() - started < 4.5


async def test_when_every_breaker_is_open_the_closest_to_reopening_is_tried() -> None:
    """All breakers open: the request still probes one deployment rather than fail untried."""
    policy = BreakerPolicy(consecutive_failures=1, open_seconds=60)
    async with two_servers(Fault.refuse()) as (a, b), client_for([a, b], breaker=policy) as client:
        b.set_fault(Fault.refuse())
        with pytest.raises(AllDeploymentsFailedError):
            await speak(client)
        a.set_fault(Fault.ok())
        b.set_fault(Fault.ok())
        speech = await speak(client)
    assert kinds(speech)[-1].endswith("success")
    assert kinds(speech)[:2] == ["primary:skipped", "backup:skipped"]


async def test_cancellation_releases_the_half_open_permit_and_is_not_a_failure() -> None:
    """A caller that cancels mid-attempt never counts as a failure and frees its probe permit."""
    policy = BreakerPolicy(consecutive_failures=1, open_seconds=0.01)
    async with (
        two_servers(Fault.refuse()) as (a, b),
        client_for([a, b], breaker=policy, first_byte_timeout=30) as client,
    ):
        await speak(client)  # trips the primary
        a.set_fault(Fault.hang())
        await anyio.sleep(0.05)  # past the open time: the next request is the half-open probe
        with anyio.move_on_after(0.3):
            await speak(client)
        deployment = client._live_pools()["kokoro"].deployments[0]
        snapshot = deployment.breaker.snapshot()
    assert snapshot.probes_in_flight == 0
    assert snapshot.state is not BreakerState.CLOSED or snapshot.consecutive_failures == 0


async def test_no_server_receives_another_deployments_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each server sees only its own key, none OPENAI_API_KEY; a keyless one, no Authorization."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-environment-must-not-leak")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-must-not-leak")
    from resilient_tts import Deployment

    async with (
        FakeSpeechServer(name="a", fault=Fault.status(500)) as a,
        FakeSpeechServer(name="b", fault=Fault.refuse()) as b,
        FakeSpeechServer(name="c") as c,
    ):
        models = {
            "kokoro": [
                Deployment(name="a", base_url=a.base_url, model="kokoro", api_key="sk-a-secret"),
                Deployment(name="b", base_url=b.base_url, model="kokoro", api_key="sk-b-secret"),
                Deployment(name="c", base_url=c.base_url, model="kokoro"),
            ]
        }
        async with SpeechClient(models=models, transport="httpx") as client:
            speech = await speak(client)
    assert speech.deployment == "c"
    assert {r.authorization for r in a.requests} == {"Bearer sk-a-secret"}
    assert [r.authorization for r in c.requests] == [None]
    for request in [*a.requests, *c.requests]:
        assert "openai-organization" not in request.headers
        assert "must-not-leak" not in str(request.headers)


async def test_voice_mapping_and_dropped_parameters_are_visible() -> None:
    """The voice map applies per deployment, and what was adapted is on the attempt."""
    async with FakeSpeechServer(name="a") as a:
        from resilient_tts import Deployment

        deployment = Deployment(
            name="a",
            base_url=a.base_url,
            model="kokoro-v1",
            voices={"alloy": "af_bella"},
            accepts_speed=False,
        )
        async with SpeechClient(models={"kokoro": [deployment]}, transport="httpx") as client:
            speech = await speak(client, speed=1.5, instructions="cheerful")
    sent = a.requests[0].params
    assert (sent["voice"], sent["model"], sent["instructions"]) == (
        "af_bella",
        "kokoro-v1",
        "cheerful",
    )
    assert "speed" not in sent
    assert speech.attempts[0].adaptations == (
        "voice 'alloy' -> 'af_bella'",
        "speed dropped: the deployment does not accept it",
    )


async def test_two_hundred_concurrent_requests_while_the_primary_dies() -> None:
    """200 requests in flight while the primary starts refusing: every one succeeds."""
    async with two_servers(Fault.ok()) as (a, b), client_for([a, b], deadline=30) as client:
        results: list[str] = []

        async def one() -> None:
            speech = await speak(client)
            results.append(speech.deployment)

        async with anyio.create_task_group() as tg:
            for i in range(200):
                if i == 50:
                    a.set_fault(Fault.reset())
                tg.start_soon(one)
    assert len(results) == 200
    assert "backup" in results


async def test_failure_kinds_cover_the_table() -> None:
    """Every FailureKind is a documented row (guards against a new kind slipping in silently)."""
    from resilient_tts._core._classify import _TABLE

    assert set(_TABLE) == set(FailureKind)
