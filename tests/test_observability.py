"""SPEC §7: every attempt, failover and breaker change is visible through hooks, logging and
OpenTelemetry, over real loopback sockets, and no secret ever reaches any of them."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from resilient_tts import (
    AllDeploymentsFailedError,
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    BreakerPolicy,
    BreakerState,
    BreakerTransitioned,
    ConfigurationError,
    Event,
    FailedOver,
    FailureKind,
    OpenTelemetryHook,
    RequestFinished,
    RequestStarted,
)
from resilient_tts.testing import FakeSpeechServer, Fault
from tests.helpers import MOCK_CLOCK, client_for, speak

pytestmark = pytest.mark.anyio

STRUCTURED_KEYS = (
    "pool",
    "deployment",
    "failure",
    "status_code",
    "breaker_state",
    "elapsed",
    "request_id",
)


def names(events: list[Event]) -> list[str]:
    return [
        f"{type(e).__name__}:{e.deployment}" if e.deployment else type(e).__name__ for e in events
    ]


async def test_a_failover_emits_its_events_in_order() -> None:
    """Refused primary: request start, attempt, failure, failover, attempt, success, request end."""
    seen: list[Event] = []
    async with (
        FakeSpeechServer(name="primary", fault=Fault.refuse()) as a,
        FakeSpeechServer(name="backup") as b,
        client_for([a, b], hooks=[seen.append]) as client,
    ):
        await speak(client)
    assert names(seen) == [
        "RequestStarted",
        "AttemptStarted:primary",
        "AttemptFailed:primary",
        "FailedOver:primary",
        "AttemptStarted:backup",
        "AttemptSucceeded:backup",
        "RequestFinished:backup",
    ]
    started, _, failed, failover, second, succeeded, finished = seen
    assert isinstance(started, RequestStarted)
    assert started.pool == "kokoro"
    assert started.input_chars == 12
    assert isinstance(failed, AttemptFailed)
    assert failed.kind is FailureKind.CONNECT
    assert isinstance(failover, FailedOver)
    assert failover.to_deployment == "backup"
    assert failover.reason == "connect"
    assert isinstance(second, AttemptStarted)
    assert second.number == 2
    assert isinstance(succeeded, AttemptSucceeded)
    assert succeeded.first_byte is not None
    assert 0 <= succeeded.first_byte <= succeeded.elapsed
    assert isinstance(finished, RequestFinished)
    assert finished.ok
    assert finished.attempts == 2
    # One request: every event carries its id, and nothing leaks past its end.
    assert started.request_id is not None
    assert {e.request_id for e in seen} == {started.request_id}


async def test_breaker_transition_is_an_event_between_the_failure_and_the_failover() -> None:
    """A failure that trips the breaker reports the transition before the request moves on."""
    seen: list[Event] = []
    policy = BreakerPolicy(consecutive_failures=1)
    async with (
        FakeSpeechServer(name="primary", fault=Fault.status(500)) as a,
        FakeSpeechServer(name="backup") as b,
        client_for([a, b], breaker=policy, hooks=[seen.append]) as client,
    ):
        await speak(client)
    assert names(seen)[1:5] == [
        "AttemptStarted:primary",
        "AttemptFailed:primary",
        "BreakerTransitioned:primary",
        "FailedOver:primary",
    ]
    transition = seen[3]
    assert isinstance(transition, BreakerTransitioned)
    assert (transition.old, transition.new) == (BreakerState.CLOSED, BreakerState.OPEN)
    assert transition.open_until is not None


async def test_a_failed_request_reports_the_error_and_its_attempts() -> None:
    """Every deployment failing ends the request with the error's class name and the tries."""
    seen: list[Event] = []
    async with (
        FakeSpeechServer(name="primary", fault=Fault.refuse()) as a,
        FakeSpeechServer(name="backup", fault=Fault.refuse()) as b,
        client_for([a, b], hooks=[seen.append]) as client,
    ):
        with pytest.raises(AllDeploymentsFailedError):
            await speak(client)
    finished = seen[-1]
    assert isinstance(finished, RequestFinished)
    assert (finished.error, finished.attempts, finished.deployment, finished.ok) == (
        "AllDeploymentsFailedError",
        2,
        "",
        False,
    )


@pytest.mark.parametrize("anyio_backend", [MOCK_CLOCK])
async def test_a_cancelled_request_is_reported_cancelled_not_failed() -> None:
    """The caller giving up is not a failure: the request ends as cancelled, no attempt fails."""
    seen: list[Event] = []
    async with (
        FakeSpeechServer(name="primary", fault=Fault.hang()) as a,
        client_for(
            [a], hooks=[seen.append], first_byte_timeout=30, attempt_timeout=60, deadline=60
        ) as client,
    ):
        with anyio.move_on_after(1):
            await speak(client)
    finished = seen[-1]
    assert isinstance(finished, RequestFinished)
    assert finished.cancelled
    assert finished.error is None
    assert not any(isinstance(e, AttemptFailed) for e in seen)


async def test_a_hook_that_raises_is_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    """Observability never fails a request: a broken hook is logged, the audio still arrives."""

    def broken(event: Event) -> None:
        raise RuntimeError("hook bug")

    async with FakeSpeechServer(name="primary") as a, client_for([a], hooks=[broken]) as client:
        speech = await speak(client)
    assert speech.deployment == "primary"
    assert any("event hook" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)


async def test_log_records_carry_the_same_structured_extras_at_sensible_levels(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every resilient_tts record has pool, deployment, failure, status_code, breaker_state,
    elapsed and request_id; a failure is a WARNING, a failover INFO, a misconfiguration ERROR."""
    caplog.set_level(logging.DEBUG, logger="resilient_tts")
    async with (
        FakeSpeechServer(name="primary", fault=Fault.status(503)) as a,
        FakeSpeechServer(name="broken", fault=Fault.unauthorized()) as b,
        FakeSpeechServer(name="backup") as c,
        client_for([a, b, c], breaker=BreakerPolicy(consecutive_failures=2)) as client,
    ):
        await speak(client)
    records = [r for r in caplog.records if r.name == "resilient_tts"]
    for record in records:
        missing = [key for key in STRUCTURED_KEYS if not hasattr(record, key)]
        assert not missing, (record.getMessage(), missing)
    failures = [
        r
        for r in records
        if r.__dict__.get("failure") == "server_error" and r.levelname == "WARNING"
    ]
    assert failures
    assert all(r.__dict__["status_code"] == 503 and r.__dict__["elapsed"] >= 0 for r in failures)
    opened = [
        r for r in records if r.__dict__["breaker_state"] == "open" and r.levelname == "WARNING"
    ]
    assert opened
    assert opened[0].__dict__["deployment"] == "primary"
    assert any(r.levelname == "INFO" and "failing over" in r.getMessage() for r in records)
    broken = [r for r in records if r.levelname == "ERROR"]
    assert broken
    assert broken[0].__dict__["deployment"] == "broken"
    assert broken[0].__dict__["status_code"] == 401
    assert any(r.levelname == "DEBUG" and "served by 'backup'" in r.getMessage() for r in records)
    assert (
        len({r.__dict__["request_id"] for r in records if r.__dict__["request_id"] is not None})
        == 1
    )


async def test_no_api_key_reaches_any_log_line_event_or_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """At DEBUG, on every logger (openai and the HTTP stack included), no key is ever written:
    not in successes, not in a 401, not when a server echoes the key back in its error body."""
    caplog.set_level(logging.DEBUG)
    seen: list[Event] = []
    echo = Fault.status(
        400, body='{"error": {"message": "Incorrect API key provided: sk-echo-key"}}'
    )
    async with (
        FakeSpeechServer(name="echo", fault=echo) as a,
        FakeSpeechServer(name="unauthorized", fault=Fault.unauthorized()) as b,
        FakeSpeechServer(name="backup") as c,
        client_for([a, b, c], hooks=[seen.append]) as client,
    ):
        speech = await speak(client)
        b.set_fault(Fault.refuse())
        c.set_fault(Fault.status(500))
        with pytest.raises(AllDeploymentsFailedError) as failed:
            await speak(client)
        health = client.health()
    assert a.requests[0].authorization == "Bearer sk-echo-key"  # the key was really sent
    secrets = ("sk-echo-key", "sk-unauthorized-key", "sk-backup-key")
    texts = [record.getMessage() for record in caplog.records]
    texts += [repr(record.__dict__) for record in caplog.records]
    texts += [repr(event) for event in seen]
    texts += [
        str(failed.value),
        repr(failed.value.attempts),
        repr(speech),
        repr(client),
        repr(health),
    ]
    texts += [repr(health.to_dict())]
    leaked = [text for text in texts for secret in secrets if secret in text]
    assert not leaked
    assert any(r.name.startswith("openai") for r in caplog.records)  # the SDK did log, at DEBUG


# -- OpenTelemetry ---------------------------------------------------------------------------


@pytest.fixture
def otel() -> Iterator[Any]:
    """Tracer and meter providers wired to in-memory exporters."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])

    class Otel:
        hook = OpenTelemetryHook(tracer_provider=tracer_provider, meter_provider=meter_provider)
        spans = exporter

        @staticmethod
        def metrics() -> dict[str, list[Any]]:
            data = reader.get_metrics_data()
            assert data is not None
            found: dict[str, list[Any]] = {}
            for resource in data.resource_metrics:
                for scope in resource.scope_metrics:
                    for metric in scope.metrics:
                        found.setdefault(metric.name, []).extend(metric.data.data_points)
            return found

    yield Otel
    tracer_provider.shutdown()
    meter_provider.shutdown()


async def test_otel_span_per_request_and_per_attempt_with_genai_attributes(otel: Any) -> None:
    """A failover is one request span with two attempt spans under it, GenAI attributes set,
    the failed attempt marked as an error, the failover a span event."""
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind, StatusCode

    current: list[int] = []

    def note_current_span(event: Event) -> None:
        if isinstance(event, AttemptStarted):
            current.append(trace.get_current_span().get_span_context().span_id)

    async with (
        FakeSpeechServer(name="primary", fault=Fault.status(404)) as a,
        FakeSpeechServer(name="backup") as b,
        client_for([a, b], hooks=[otel.hook, note_current_span]) as client,
    ):
        await speak(client)
        assert not trace.get_current_span().get_span_context().is_valid  # detached afterwards
    spans = {span.name: span for span in otel.spans.get_finished_spans()}
    assert set(spans) == {"text_to_speech kokoro", "attempt primary", "attempt backup"}
    request, failed, served = (
        spans["text_to_speech kokoro"],
        spans["attempt primary"],
        spans["attempt backup"],
    )
    assert request.attributes is not None
    assert failed.attributes is not None
    assert served.attributes is not None
    assert request.attributes["gen_ai.operation.name"] == "text_to_speech"
    assert request.attributes["gen_ai.request.model"] == "kokoro"
    assert request.attributes["gen_ai.provider.name"] == "openai"
    assert request.attributes["resilient_tts.deployment"] == "backup"
    assert request.attributes["resilient_tts.attempts"] == 2
    assert request.status.status_code is not StatusCode.ERROR
    for attempt in (failed, served):
        assert attempt.parent is not None
        assert attempt.parent.span_id == request.context.span_id
        assert attempt.kind is SpanKind.CLIENT
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes["error.type"] == "deployment_broken"
    assert failed.attributes["http.response.status_code"] == 404
    assert served.attributes["resilient_tts.attempt.outcome"] == "success"
    assert [e.name for e in request.events] == ["breaker_transition", "failover"]
    # While the request runs its span is the current one, so HTTP spans nest under it.
    assert current == [request.context.span_id, request.context.span_id]


async def test_otel_metrics_count_requests_attempts_failovers_breakers_and_first_byte(
    otel: Any,
) -> None:
    """The metrics a dashboard needs are recorded, with the pool and deployment as attributes."""
    async with (
        FakeSpeechServer(name="primary", fault=Fault.refuse()) as a,
        FakeSpeechServer(name="backup") as b,
        client_for(
            [a, b], breaker=BreakerPolicy(consecutive_failures=1), hooks=[otel.hook]
        ) as client,
    ):
        await speak(client)
        await speak(client)
    metrics = otel.metrics()

    def total(name: str, **attrs: object) -> float:
        points = [
            p for p in metrics[name] if all(p.attributes.get(k) == v for k, v in attrs.items())
        ]
        return float(sum(p.value for p in points))

    assert total("resilient_tts.requests", **{"resilient_tts.outcome": "success"}) == 2
    assert (
        total(
            "resilient_tts.attempts",
            **{"resilient_tts.deployment": "primary", "error.type": "connect"},
        )
        == 1
    )
    assert (
        total(
            "resilient_tts.attempts",
            **{"resilient_tts.deployment": "backup", "resilient_tts.attempt.outcome": "success"},
        )
        == 2
    )
    assert (
        total(
            "resilient_tts.failovers",
            **{"resilient_tts.from": "primary", "resilient_tts.to": "backup"},
        )
        == 1
    )
    states = {
        p.attributes["resilient_tts.deployment"]: p.value
        for p in metrics["resilient_tts.breaker.state"]
    }
    assert states == {"primary": 2, "backup": 0}
    assert sum(p.count for p in metrics["gen_ai.client.operation.duration"]) == 2
    first_chunk = metrics["gen_ai.client.operation.time_to_first_chunk"]
    assert sum(p.count for p in first_chunk) == 2
    assert all(p.attributes["gen_ai.request.model"] == "kokoro" for p in first_chunk)


async def test_otel_failed_request_span_has_error_status_and_no_secret(otel: Any) -> None:
    """A request that fails everywhere is an error span; no attribute holds a key or the text."""
    from opentelemetry.trace import StatusCode

    async with (
        FakeSpeechServer(name="primary", fault=Fault.refuse()) as a,
        client_for([a], hooks=[otel.hook]) as client,
    ):
        with pytest.raises(AllDeploymentsFailedError):
            await speak(client, "A secret sentence.")
    spans = otel.spans.get_finished_spans()
    request = next(s for s in spans if s.name == "text_to_speech kokoro")
    assert request.status.status_code is StatusCode.ERROR
    assert request.attributes["error.type"] == "AllDeploymentsFailedError"
    recorded = repr([(s.attributes, [e.attributes for e in s.events]) for s in spans]) + repr(
        otel.metrics()
    )
    assert "sk-primary-key" not in recorded
    assert "secret sentence" not in recorded


def test_otel_hook_without_opentelemetry_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the otel extra, building the hook raises a ConfigurationError with the fix."""
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'resilient-tts\[otel\]'"):
        OpenTelemetryHook()
