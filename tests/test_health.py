"""SPEC §7: a health snapshot per pool and deployment, and an operator's force-open and reset."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import anyio
import pytest

from resilient_tts import (
    AttemptSucceeded,
    BreakerPolicy,
    BreakerState,
    Deployment,
    FailureKind,
    SpeechClient,
    UnknownDeploymentError,
)
from resilient_tts._observe._health import LATENCY_WINDOW, HealthLog, percentile
from resilient_tts.testing import FakeSpeechServer, Fault
from tests.helpers import MOCK_CLOCK, client_for, speak

pytestmark = pytest.mark.anyio


async def test_fresh_client_reports_every_deployment_closed_and_available() -> None:
    """Before any traffic: closed breakers, no failures, no latency samples, no last error."""
    async with (
        FakeSpeechServer(name="primary") as a,
        FakeSpeechServer(name="backup") as b,
        client_for([a, b]) as client,
    ):
        health = client.health()
    pool = health.pool("kokoro")
    assert [d.name for d in pool.deployments] == ["primary", "backup"]
    assert pool.available == ("primary", "backup")
    for d in pool.deployments:
        assert (d.state, d.available, d.ready_in, d.open_until, d.cooldown_until) == (
            BreakerState.CLOSED,
            True,
            0.0,
            None,
            None,
        )
        assert (d.failure_rate, d.first_byte_samples, d.first_byte_p50, d.last_error) == (
            0.0,
            0,
            None,
            None,
        )
    assert health.taken_at.tzinfo is UTC


@pytest.mark.parametrize("anyio_backend", [MOCK_CLOCK])
async def test_snapshot_after_failures_shows_the_open_breaker_and_the_last_error() -> None:
    """A primary answering 503 trips its breaker: open, until when, why, and how often it failed;
    the backup that served shows first-byte latency percentiles."""
    policy = BreakerPolicy(consecutive_failures=2, jitter=0.0)
    async with (
        FakeSpeechServer(name="primary", fault=Fault.status(503)) as a,
        FakeSpeechServer(name="backup") as b,
        client_for([a, b], breaker=policy, breaker_open_seconds=5) as client,
    ):
        await speak(client)
        health = client.health()
    primary, backup = health.pool("kokoro").deployments
    assert primary.state is BreakerState.OPEN
    assert not primary.available
    assert 4.5 < primary.ready_in <= 5.0
    assert primary.open_until is not None
    assert primary.open_until > health.taken_at
    assert (primary.failure_rate, primary.calls_in_window, primary.trips) == (1.0, 2, 1)
    assert primary.last_error is FailureKind.SERVER_ERROR
    assert primary.last_error_status == 503
    assert primary.last_error_at is not None
    assert primary.last_error_detail
    assert health.pool("kokoro").available == ("backup",)
    assert backup.state is BreakerState.CLOSED
    assert backup.first_byte_samples == 1
    assert backup.first_byte_p50 is not None
    assert backup.first_byte_p50 >= 0


@pytest.mark.parametrize("anyio_backend", [MOCK_CLOCK])
async def test_retry_after_shows_as_a_cooldown_not_an_open_breaker() -> None:
    """A 503 with Retry-After cools the deployment down: still closed, but not available."""
    async with (
        FakeSpeechServer(name="primary", fault=Fault.status(503, retry_after=30)) as a,
        FakeSpeechServer(name="backup") as b,
        client_for([a, b]) as client,
    ):
        await speak(client)
        primary = client.health().deployments("primary")[0]
    assert primary.state is BreakerState.CLOSED
    assert primary.cooldown_until is not None
    assert not primary.available
    assert primary.ready_in == pytest.approx(30, abs=1)
    assert primary.last_error is FailureKind.RATE_LIMITED


async def test_first_byte_percentiles_follow_the_recent_window() -> None:
    """p50 <= p95 <= p99 over successful attempts; the window keeps the last 200 only."""
    log = HealthLog()
    for ms in range(1, 501):
        log(AttemptSucceeded(pool="kokoro", deployment="a", elapsed=1.0, first_byte=ms / 1000))
    samples = sorted(log.first_bytes("kokoro", "a"))
    assert len(samples) == LATENCY_WINDOW
    assert samples[0] == 0.301  # the oldest 300 were dropped
    assert percentile(samples, 50) == 0.4
    assert percentile(samples, 95) == 0.49
    assert percentile(samples, 99) == 0.498
    assert percentile([], 50) is None
    assert percentile([0.2], 99) == 0.2


async def test_percentiles_from_real_requests_are_ordered() -> None:
    """After several requests the snapshot's percentiles are present and ordered."""
    async with FakeSpeechServer(name="primary") as a, client_for([a]) as client:
        for _ in range(5):
            await speak(client)
        d = client.health().deployments("primary")[0]
    assert d.first_byte_samples == 5
    assert d.first_byte_p50 is not None
    assert d.first_byte_p95 is not None
    assert d.first_byte_p99 is not None
    assert d.first_byte_p50 <= d.first_byte_p95 <= d.first_byte_p99


@pytest.mark.parametrize("anyio_backend", [MOCK_CLOCK])
async def test_force_open_takes_a_deployment_out_and_reset_brings_it_back() -> None:
    """An operator can drain a healthy deployment for a while and put it back at once."""
    async with (
        FakeSpeechServer(name="primary") as a,
        FakeSpeechServer(name="backup") as b,
        client_for([a, b]) as client,
    ):
        await client.force_open("primary", seconds=600)
        drained = client.health().deployments("primary")[0]
        during = await speak(client)
        await anyio.sleep(60)
        still = await speak(client)
        await client.reset("primary")
        after = await speak(client)
        back = client.health().deployments("primary")[0]
    assert drained.state is BreakerState.OPEN
    assert 599 < drained.ready_in <= 600
    assert (during.deployment, still.deployment, after.deployment) == (
        "backup",
        "backup",
        "primary",
    )
    assert a.hits == 1
    assert back.state is BreakerState.CLOSED
    assert back.available


async def test_force_open_and_reset_apply_to_every_pool_that_has_the_deployment() -> None:
    """The same deployment in two pools is one name: both of its breakers follow the operator."""
    async with FakeSpeechServer(name="shared") as a, FakeSpeechServer(name="other") as b:
        shared = Deployment(name="shared", base_url=a.base_url, model="kokoro")
        other = Deployment(name="other", base_url=b.base_url, model="kokoro")
        async with SpeechClient(models={"kokoro": [shared, other], "tts-1": [shared]}) as client:
            await client.force_open("shared")
            states = [d.state for d in client.health().deployments("shared")]
            await client.reset("shared")
            reset = [d.state for d in client.health().deployments("shared")]
    assert states == [BreakerState.OPEN, BreakerState.OPEN]
    assert reset == [BreakerState.CLOSED, BreakerState.CLOSED]


async def test_unknown_deployment_name_is_a_clear_key_error() -> None:
    """A typo in a name fails loudly, names what exists, and is also a KeyError."""
    async with FakeSpeechServer(name="primary") as a, client_for([a]) as client:
        with pytest.raises(UnknownDeploymentError) as caught:
            await client.force_open("primray")
        with pytest.raises(KeyError):
            await client.reset("nope")
    assert str(caught.value) == "no deployment is named 'primray'; the configured ones are: primary"
    assert caught.value.name == "primray"


async def test_health_is_json_ready_and_secret_free() -> None:
    """`to_dict()` serializes with json as is; no key appears in it or in the reprs."""
    async with (
        FakeSpeechServer(name="primary", fault=Fault.unauthorized()) as a,
        FakeSpeechServer(name="backup") as b,
        client_for([a, b]) as client,
    ):
        await speak(client)
        health = client.health()
    text = json.dumps(health.to_dict())
    decoded = json.loads(text)
    primary = decoded["pools"][0]["deployments"][0]
    assert primary["state"] == "open"
    assert primary["last_error"] == "deployment_broken"
    assert datetime.fromisoformat(primary["open_until"]) > health.taken_at
    assert decoded["pools"][0]["available"] == ["backup"]
    for secret in ("sk-primary-key", "sk-backup-key"):
        assert secret not in text
        assert secret not in repr(health)
