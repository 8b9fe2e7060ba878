"""OpenTelemetry spans and metrics, following the GenAI semantic conventions where they apply.

Optional: ``pip install 'resilient-tts[otel]'``. It is a hook like any other::

    from resilient_tts import OpenTelemetryHook, SpeechClient

    client = SpeechClient(hooks=[OpenTelemetryHook()])      # the global tracer and meter providers
    OpenTelemetryHook(tracer_provider=provider, meter_provider=meter_provider)

Each request is a span (``text_to_speech <model>``), the current span while it runs, with one
child span per attempt (``attempt <deployment>``, kind CLIENT). Failovers, breaker changes,
cool-downs and hedges are span events on the request. Metrics:

| instrument | kind | what |
| --- | --- | --- |
| ``gen_ai.client.operation.duration`` | histogram, s | whole requests, every attempt included |
| ``gen_ai.client.operation.time_to_first_chunk`` | histogram, s | first audio byte, per attempt |
| ``resilient_tts.requests`` | counter | requests by outcome (success, failed, cancelled) |
| ``resilient_tts.attempts`` | counter | attempts by deployment, outcome and failure kind |
| ``resilient_tts.failovers`` | counter | moves from one deployment to the next |
| ``resilient_tts.breaker.state`` | gauge | 0 closed, 1 half-open, 2 open, per deployment |
| ``resilient_tts.breaker.transitions`` | counter | breaker changes by new state |
| ``resilient_tts.cooldowns`` | counter | ``Retry-After`` cool-downs |
| ``resilient_tts.retry_budget.exhausted`` | counter | retries not made: the budget was spent |
| ``resilient_tts.hedges`` | counter | hedged attempts started |

Attributes: ``gen_ai.operation.name`` (``text_to_speech``), ``gen_ai.provider.name``
(``openai``: every deployment speaks the OpenAI API), ``gen_ai.request.model`` (the logical
model), ``gen_ai.output.type`` (``speech``), ``error.type``, ``http.response.status_code``, and
``resilient_tts.deployment``, ``resilient_tts.attempt.outcome``, ``resilient_tts.failure.kind``.
Never the input text, never audio, never a key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from .._core._breaker import BreakerState
from .._exceptions import ConfigurationError
from ._events import (
    AttemptFailed,
    AttemptStarted,
    AttemptSucceeded,
    BreakerTransitioned,
    BudgetExhausted,
    CooldownSet,
    Event,
    FailedOver,
    HedgeCancelled,
    HedgeStarted,
    RequestFinished,
    RequestStarted,
    SegmentSwitched,
)

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import Span, TracerProvider

__all__ = ["OpenTelemetryHook"]

OPERATION = "text_to_speech"
PROVIDER = "openai"
BREAKER_STATE_VALUES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
# Bucket boundaries the GenAI conventions recommend for these two histograms.
_DURATION_BUCKETS = [0.01 * 2**i for i in range(14)]  # 0.01 s .. 81.92 s
_FIRST_CHUNK_BUCKETS = [
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
]


@dataclass
class _Request:
    span: Span
    token: object | None
    task: int
    attempts: dict[str, Span] = field(default_factory=dict)  # deployment -> its open attempt span


class OpenTelemetryHook:
    """Creates a span per request and per attempt, and records resilient_tts's metrics.

    Raises `ConfigurationError` when ``opentelemetry-api`` is not installed. Without an SDK
    configured, the API's no-op providers make it nearly free.
    """

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        try:
            from opentelemetry import context, metrics, trace
        except ImportError as exc:
            raise ConfigurationError(
                "OpenTelemetryHook needs the OpenTelemetry API: pip install 'resilient-tts[otel]'"
            ) from exc
        from .._version import __version__

        self._context = context
        self._trace = trace
        self._tracer = trace.get_tracer(
            "resilient_tts", __version__, tracer_provider=tracer_provider
        )
        meter = metrics.get_meter("resilient_tts", __version__, meter_provider=meter_provider)
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="Duration of text-to-speech requests, every attempt and wait included.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self._first_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk",
            unit="s",
            description="Time from sending an attempt to its first audio byte.",
            explicit_bucket_boundaries_advisory=_FIRST_CHUNK_BUCKETS,
        )
        self._requests = meter.create_counter(
            "resilient_tts.requests", unit="{request}", description="Requests by outcome."
        )
        self._attempts = meter.create_counter(
            "resilient_tts.attempts",
            unit="{attempt}",
            description="Attempts by deployment, outcome and failure kind.",
        )
        self._failovers = meter.create_counter(
            "resilient_tts.failovers",
            unit="{failover}",
            description="Moves from one deployment to the next.",
        )
        self._breaker_state = meter.create_gauge(
            "resilient_tts.breaker.state",
            description="Circuit breaker state: 0 closed, 1 half-open, 2 open.",
        )
        self._transitions = meter.create_counter(
            "resilient_tts.breaker.transitions",
            unit="{transition}",
            description="Circuit breaker changes by new state.",
        )
        self._cooldowns = meter.create_counter(
            "resilient_tts.cooldowns",
            unit="{cooldown}",
            description="Retry-After cool-downs set on a deployment.",
        )
        self._budget_exhausted = meter.create_counter(
            "resilient_tts.retry_budget.exhausted",
            unit="{retry}",
            description="Retries not made: the budget was spent.",
        )
        self._hedges = meter.create_counter(
            "resilient_tts.hedges", unit="{hedge}", description="Hedged attempts started."
        )
        self._live: dict[int | None, _Request] = {}
        self._orphans: dict[tuple[str, str], Span] = {}  # attempts outside any request scope
        self._seen: set[tuple[str, str]] = set()

    def __repr__(self) -> str:
        return f"<OpenTelemetryHook requests_in_flight={len(self._live)}>"

    def __call__(self, event: Event) -> None:
        match event:
            case RequestStarted():
                self._request_started(event)
            case RequestFinished():
                self._request_finished(event)
            case AttemptStarted():
                self._attempt_started(event)
            case AttemptSucceeded():
                self._attempt_succeeded(event)
            case AttemptFailed():
                self._attempt_failed(event)
            case FailedOver():
                attrs = {
                    **_model(event),
                    "resilient_tts.from": event.deployment,
                    "resilient_tts.to": event.to_deployment,
                }
                self._failovers.add(1, {**attrs, "resilient_tts.failure.kind": event.reason})
                self._span_event(
                    event, "failover", {**attrs, "resilient_tts.failure.kind": event.reason}
                )
            case BreakerTransitioned():
                self._breaker(event, event.new)
            case CooldownSet():
                self._cooldowns.add(1, _deployment(event))
                self._span_event(
                    event,
                    "cooldown",
                    {**_deployment(event), "resilient_tts.cooldown.seconds": event.seconds},
                )
            case BudgetExhausted():
                self._budget_exhausted.add(1, _deployment(event))
                self._span_event(event, "retry_budget_exhausted", _deployment(event))
            case HedgeStarted():
                self._hedges.add(1, _deployment(event))
                self._span_event(
                    event, "hedge", {**_deployment(event), "resilient_tts.hedge.after": event.after}
                )
            case HedgeCancelled():
                self._end_attempt(event, "cancelled")
            case SegmentSwitched():
                attrs = {
                    **_deployment(event),
                    "resilient_tts.previous": event.previous,
                    "resilient_tts.segment": event.segment,
                }
                self._span_event(event, "segment_switched", attrs)

    # -- requests ------------------------------------------------------------------------

    def _request_started(self, event: RequestStarted) -> None:
        attrs: dict[str, Any] = {
            **_model(event),
            "gen_ai.output.type": "speech",
            "resilient_tts.input.characters": event.input_chars,
            "resilient_tts.streaming": event.streaming,
        }
        span = self._tracer.start_span(f"{OPERATION} {event.pool}", attributes=attrs)
        # The request span is the current span while it runs, so HTTP client spans (and the
        # app's log records) nest under it.
        token = self._context.attach(self._trace.set_span_in_context(span))
        self._live[event.request_id] = _Request(span, token, _task_id())

    def _request_finished(self, event: RequestFinished) -> None:
        request = self._live.pop(event.request_id, None)
        outcome = "cancelled" if event.cancelled else "success" if event.ok else "failed"
        attrs = _model(event)
        if event.error is not None:
            attrs["error.type"] = event.error
        self._duration.record(event.elapsed, attrs)
        self._requests.add(1, {**attrs, "resilient_tts.outcome": outcome})
        if request is None:
            return
        for deployment, span in request.attempts.items():  # cancelled mid-attempt: no event came
            span.set_attribute("resilient_tts.attempt.outcome", "cancelled")
            span.end()
            self._attempts.add(
                1,
                {
                    **_model(event),
                    "resilient_tts.deployment": deployment,
                    "resilient_tts.attempt.outcome": "cancelled",
                },
            )
        span = request.span
        span.set_attribute("resilient_tts.attempts", event.attempts)
        span.set_attribute("resilient_tts.outcome", outcome)
        if event.deployment:
            span.set_attribute("resilient_tts.deployment", event.deployment)
        if event.error is not None:
            from opentelemetry.trace import Status, StatusCode

            span.set_attribute("error.type", event.error)
            span.set_status(Status(StatusCode.ERROR, event.error))
        span.end()
        # Detach only in the task that attached: a context token is not valid elsewhere.
        if (
            request.token is not None
            and request.task == _task_id()
            and self._trace.get_current_span() is span
        ):
            self._context.detach(request.token)  # type: ignore[arg-type]

    # -- attempts ------------------------------------------------------------------------

    def _attempt_started(self, event: AttemptStarted) -> None:
        from opentelemetry.trace import SpanKind

        self._first_sight(event)
        request = self._live.get(event.request_id)
        parent: Context | None = self._trace.set_span_in_context(request.span) if request else None
        attrs = {
            **_deployment(event),
            "gen_ai.output.type": "speech",
            "resilient_tts.attempt.number": event.number,
        }
        span = self._tracer.start_span(
            f"attempt {event.deployment}", context=parent, kind=SpanKind.CLIENT, attributes=attrs
        )
        if request is not None:
            request.attempts[event.deployment] = span
        else:
            self._orphans[(event.pool, event.deployment)] = span

    def _attempt_succeeded(self, event: AttemptSucceeded) -> None:
        if event.first_byte is not None:
            self._first_chunk.record(event.first_byte, _deployment(event))
        span = self._end_attempt(event, "success")
        if span is not None and event.first_byte is not None:
            span.set_attribute("resilient_tts.first_byte", event.first_byte)

    def _attempt_failed(self, event: AttemptFailed) -> None:
        from opentelemetry.trace import Status, StatusCode

        span = self._pop_attempt(event)
        self._attempts.add(
            1,
            {
                **_deployment(event),
                "resilient_tts.attempt.outcome": "failed",
                "error.type": event.kind.value,
            },
        )
        if span is None:
            return
        span.set_attribute("resilient_tts.attempt.outcome", "failed")
        span.set_attribute("resilient_tts.failure.kind", event.kind.value)
        span.set_attribute("error.type", event.kind.value)
        if event.status_code is not None:
            span.set_attribute("http.response.status_code", event.status_code)
        span.set_status(Status(StatusCode.ERROR, f"{event.kind.value}: {event.detail}"))
        span.end()

    def _end_attempt(self, event: Event, outcome: str) -> Span | None:
        self._attempts.add(1, {**_deployment(event), "resilient_tts.attempt.outcome": outcome})
        span = self._pop_attempt(event)
        if span is not None:
            span.set_attribute("resilient_tts.attempt.outcome", outcome)
            span.end()
        return span

    def _pop_attempt(self, event: Event) -> Span | None:
        request = self._live.get(event.request_id)
        if request is not None:
            return request.attempts.pop(event.deployment, None)
        return self._orphans.pop((event.pool, event.deployment), None)

    # -- breakers and the rest -----------------------------------------------------------

    def _first_sight(self, event: Event) -> None:
        """A deployment's breaker starts closed; say so before its first transition."""
        key = (event.pool, event.deployment)
        if key not in self._seen:
            self._seen.add(key)
            self._breaker_state.set(BREAKER_STATE_VALUES[BreakerState.CLOSED], _deployment(event))

    def _breaker(self, event: BreakerTransitioned, new: BreakerState) -> None:
        self._seen.add((event.pool, event.deployment))
        self._breaker_state.set(BREAKER_STATE_VALUES[new], _deployment(event))
        self._transitions.add(1, {**_deployment(event), "resilient_tts.breaker.state": new.value})
        self._span_event(
            event,
            "breaker_transition",
            {
                **_deployment(event),
                "resilient_tts.breaker.state": new.value,
                "resilient_tts.breaker.reason": event.reason,
            },
        )

    def _span_event(self, event: Event, name: str, attrs: dict[str, Any]) -> None:
        request = self._live.get(event.request_id)
        if request is not None:
            request.span.add_event(name, attrs)


def _model(event: Event) -> dict[str, Any]:
    return {
        "gen_ai.operation.name": OPERATION,
        "gen_ai.provider.name": PROVIDER,
        "gen_ai.request.model": event.pool,
    }


def _deployment(event: Event) -> dict[str, Any]:
    return {**_model(event), "resilient_tts.deployment": event.deployment}


def _task_id() -> int:
    try:
        return anyio.get_current_task().id
    except RuntimeError:  # no event loop: only in unit tests that call the hook directly
        return 0
