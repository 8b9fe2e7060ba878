"""SPEC §8 against a real ``redis-server`` on loopback: a fleet shares one breaker per deployment.

Each test gets its own key prefix, so tests never see each other's state. Cross-process tests
run clients in child processes (``python -m tests.test_shared_state child CONFIG``) that take
one JSON command per line on stdin and answer one JSON line on stdout; every child and every
``redis-server`` is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
import redis
from anyio.streams.buffered import BufferedByteReceiveStream

from resilient_tts import BreakerPolicy, BreakerState, ConfigurationError, SpeechClient
from resilient_tts._fleet._redis_state import RedisStore
from resilient_tts._fleet._shared_state import SharedCircuitBreaker
from resilient_tts._fleet._store import StoreKey
from resilient_tts._observe._events import BreakerTransitioned, Event
from resilient_tts.testing import FakeSpeechServer, Fault
from tests.helpers import deployments, speak

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
REDIS_SERVER = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None, reason="redis-server is not installed (apt-get install redis-server)"
)

# Cross-process tests run once: the children mix asyncio and trio, the parent's loop matters not.
CROSS_PROCESS = pytest.mark.parametrize("anyio_backend", ["asyncio"])


# -- a redis-server of our own ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A ``redis-server`` on a loopback port, without persistence, controlled by its PID."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        command = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        try:
            while True:  # bounded: redis-server takes a few milliseconds to listen
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline or self.process.poll() is not None:
                        raise RuntimeError(
                            f"redis-server did not start on port {self.port}"
                        ) from None
                    time.sleep(0.01)
        finally:
            client.close()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)  # a paused server cannot handle SIGTERM
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def pause(self) -> None:
        """Freeze the server: connections stay open and nothing answers (a hung Redis)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=2)


def _running_redis_server() -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    yield from _running_redis_server()


@pytest.fixture
def own_redis_server() -> Iterator[RedisServer]:
    """A server this test alone may stop, pause and restart."""
    yield from _running_redis_server()


@pytest.fixture
def prefix() -> str:
    return f"test_{uuid.uuid4().hex[:12]}"


def shared_client(
    servers: Sequence[FakeSpeechServer],
    redis_url: str,
    prefix: str,
    *,
    redis_sync_interval: float = 0.1,
    redis_timeout: float = 0.1,
    **settings: Any,
) -> SpeechClient:
    """A client sharing its breakers through ``redis_url`` under ``prefix``."""
    settings.setdefault("transport", "httpx")
    settings.setdefault("first_byte_timeout", 2.0)
    settings.setdefault("deadline", 10.0)
    settings.setdefault("breaker", BreakerPolicy(consecutive_failures=2))
    # These knobs are settings without a constructor argument: set them as the environment would.
    knobs = {
        "PREFIX": prefix,
        "SYNC_INTERVAL": str(redis_sync_interval),
        "TIMEOUT": str(redis_timeout),
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in knobs.items():
            patch.setenv(f"RESILIENT_TTS_REDIS_{name}", value)
        return SpeechClient(
            models={"kokoro": deployments(servers)}, redis_url=redis_url, **settings
        )


def probes_key(prefix: str, deployment: str = "primary") -> str:
    return f"{prefix}:kokoro:{deployment}:probes"


def breaker_of(client: SpeechClient, name: str) -> SharedCircuitBreaker:
    for deployment in client._live_pools()["kokoro"].deployments:
        if deployment.name == name:
            assert isinstance(deployment.breaker, SharedCircuitBreaker)
            return deployment.breaker
    raise KeyError(name)


def kinds(speech: Any) -> list[str]:
    return [
        f"{a.deployment}:{a.kind.value if a.kind else a.outcome.value}" for a in speech.attempts
    ]


# -- child processes -------------------------------------------------------------------------


class Child:
    """A client in another process, driven one JSON line at a time."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        assert process.stdout is not None
        self._stdout = BufferedByteReceiveStream(process.stdout)

    async def ask(self, **command: Any) -> Any:
        assert self.process.stdin is not None
        await self.process.stdin.send(json.dumps(command).encode() + b"\n")
        with anyio.fail_after(30):
            line = await self._stdout.receive_until(b"\n", 1 << 20)
        return json.loads(line)


@contextlib.asynccontextmanager
async def children(count: int, config: dict[str, Any]) -> AsyncIterator[list[Child]]:
    """``count`` child clients, started at once, each ready to take commands."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RESILIENT_TTS_")}
    started: list[Child] = []
    try:
        for index in range(count):
            # A mixed fleet: asyncio and trio processes share one breaker.
            backend = ("asyncio", "trio")[index % 2]
            command = [
                sys.executable,
                "-m",
                "tests.test_shared_state",
                "child",
                backend,
                json.dumps(config),
            ]
            process = await anyio.open_process(command, cwd=ROOT, env=env, stderr=None)
            started.append(Child(process))
        for child in started:
            assert await child.ask(op="ping") == "pong"
        yield started
    finally:
        with anyio.CancelScope(shield=True):
            for child in started:
                with contextlib.suppress(Exception):
                    with anyio.move_on_after(5):
                        await child.ask(op="quit")
                if child.process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child.process.pid, signal.SIGKILL)
                await child.process.wait()
                await child.process.aclose()


def child_config(
    servers: Sequence[FakeSpeechServer], redis_url: str, prefix: str, **extra: Any
) -> dict[str, Any]:
    return {
        "deployments": [
            {"name": s.name, "base_url": s.base_url, "model": s.model} for s in servers
        ],
        "redis_url": redis_url,
        "prefix": prefix,
        "sync_interval": 0.001,  # every request reads: "at once" needs no sleeping in tests
        **extra,
    }


async def ask_all(processes: Sequence[Child], **command: Any) -> list[Any]:
    """Send ``command`` to every child at once; their answers in order."""
    answers: list[Any] = [None] * len(processes)

    async def one(index: int) -> None:
        answers[index] = await processes[index].ask(**command)

    async with anyio.create_task_group() as group:
        for index in range(len(processes)):
            group.start_soon(one, index)
    return answers


# -- two processes, one breaker --------------------------------------------------------------


@needs_redis
@CROSS_PROCESS
async def test_a_trip_in_one_process_makes_another_skip_the_deployment_at_once(
    redis_server: RedisServer, prefix: str
) -> None:
    """Process A trips the primary's breaker; process B skips the primary on its next request."""
    async with (
        FakeSpeechServer(name="primary") as primary,
        FakeSpeechServer(name="backup") as backup,
    ):
        config = child_config([primary, backup], redis_server.url, prefix, consecutive_failures=2)
        async with children(2, config) as (a, b):
            assert await b.ask(op="speak") == [["primary:success"]]  # B is warm, its copy fresh
            primary.set_fault(Fault.status(500))
            assert await a.ask(op="speak") == [
                ["primary:server_error", "primary:server_error", "backup:success"]
            ]
            hits = primary.hits
            assert await b.ask(op="speak") == [["primary:skipped", "backup:success"]]
            assert await b.ask(op="state") == "open"
    assert primary.hits == hits  # B never reached the dead primary


@needs_redis
@CROSS_PROCESS
@pytest.mark.parametrize("probes", [1, 2])
async def test_half_open_probe_permits_are_global(
    redis_server: RedisServer, prefix: str, probes: int
) -> None:
    """While half-open, only `half_open_probes` requests of the whole fleet reach the server."""
    # The probes stay in flight while the others arrive, even on a loaded CI machine.
    slow = Fault.slow_first_byte(3.0)
    async with (
        FakeSpeechServer(name="primary", fault=slow) as primary,
        FakeSpeechServer(name="backup") as backup,
    ):
        config = child_config([primary, backup], redis_server.url, prefix, half_open_probes=probes)
        # Half-open across the fleet: open, with its open time already over.
        store = RedisStore.from_url(redis_server.url, prefix=prefix, timeout=1.0)
        store.publish_open(StoreKey("kokoro", "primary", 30.0), 0.0, "test", "evt-1", trip=True)
        async with children(3, config) as fleet:
            first = await ask_all(fleet, op="speak")
            assert primary.hits == probes
            assert sorted(answer[0][0] for answer in first) == sorted(
                ["primary:success"] * probes + ["primary:skipped"] * (3 - probes)
            )
            # A probe succeeded: the breaker closed across the fleet; everyone is back.
            primary.set_fault(Fault.ok())
            again = await ask_all(fleet, op="speak")
            assert [answer[0] for answer in again] == [["primary:success"]] * 3
        store.close()
    assert redis_server.client().exists(probes_key(prefix)) == 0  # closed: no permit left


@needs_redis
@CROSS_PROCESS
async def test_failures_add_up_across_the_fleet(redis_server: RedisServer, prefix: str) -> None:
    """Failures in different processes count towards one streak: the fleet trips together."""
    broken = Fault.not_audio("html")  # a plain failure, never retried on the same deployment
    async with (
        FakeSpeechServer(name="primary", fault=broken) as primary,
        FakeSpeechServer(name="backup") as backup,
    ):
        config = child_config([primary, backup], redis_server.url, prefix, consecutive_failures=3)
        async with children(3, config) as fleet:
            for child in fleet:  # one failure each: no process reaches 3 on its own
                assert await child.ask(op="speak") == [["primary:not_audio", "backup:success"]]
            answers = await ask_all(fleet, op="speak")
    assert all(answer == [["primary:skipped", "backup:success"]] for answer in answers)
    assert primary.hits == 3


# -- one process: the store's behaviour ------------------------------------------------------


@needs_redis
async def test_probe_success_closes_the_breaker_everywhere(
    redis_server: RedisServer, prefix: str
) -> None:
    """A probe that succeeds in one client closes the shared breaker; the other follows."""
    events: list[Event] = []
    async with (
        FakeSpeechServer(name="primary") as primary,
        FakeSpeechServer(name="backup") as backup,
    ):
        one = shared_client(
            [primary, backup],
            redis_server.url,
            prefix,
            redis_sync_interval=0.001,
            hooks=[events.append],
        )
        two = shared_client([primary, backup], redis_server.url, prefix, redis_sync_interval=0.001)
        async with one, two:
            await speak(one)
            breaker_of(one, "primary").force_open(0.0, reason="test")  # half-open, published
            await sync(one)
            await refresh(two)
            assert kinds(await speak(two)) == ["primary:success"]  # two probes, and closes
            assert breaker_of(two, "primary").state is BreakerState.CLOSED
            assert breaker_of(one, "primary").state is BreakerState.HALF_OPEN
            await sync(two)
            await refresh(one)
            assert breaker_of(one, "primary").state is BreakerState.CLOSED  # no probe of its own
            assert kinds(await speak(one)) == ["primary:success"]
    closed = [
        e for e in events if isinstance(e, BreakerTransitioned) and e.new is BreakerState.CLOSED
    ]
    assert [e.reason for e in closed] == ["shared: probe succeeded elsewhere"]
    assert primary.hits == 3


@needs_redis
async def test_a_probe_that_failed_elsewhere_keeps_this_process_away(
    redis_server: RedisServer, prefix: str
) -> None:
    """Half-open across the fleet: one client's probe fails; the other does not probe again."""
    async with (
        FakeSpeechServer(name="primary") as primary,
        FakeSpeechServer(name="backup") as backup,
    ):
        one = shared_client([primary, backup], redis_server.url, prefix, redis_sync_interval=0.001)
        two = shared_client([primary, backup], redis_server.url, prefix, redis_sync_interval=0.001)
        async with one, two:
            await speak(one)
            await speak(two)
            breaker_of(one, "primary").force_open(0.0, reason="test")  # half-open fleet-wide
            await sync(one)
            await refresh(two)
            primary.set_fault(Fault.not_audio("html"))  # a plain failure, never retried
            assert kinds(await speak(two)) == ["primary:not_audio", "backup:success"]  # probe
            await sync(two)
            assert kinds(await speak(one)) == ["primary:skipped", "backup:success"]
            assert breaker_of(one, "primary").state is BreakerState.OPEN
    assert primary.hits == 3


@needs_redis
async def test_a_retry_after_cool_down_is_shared(redis_server: RedisServer, prefix: str) -> None:
    """429 with Retry-After in one client rests the deployment for every client."""
    async with (
        FakeSpeechServer(name="primary") as primary,
        FakeSpeechServer(name="backup") as backup,
    ):
        one = shared_client([primary, backup], redis_server.url, prefix, redis_sync_interval=0.001)
        two = shared_client([primary, backup], redis_server.url, prefix, redis_sync_interval=0.001)
        async with one, two:
            primary.set_fault(Fault.status(429, retry_after=30))
            assert kinds(await speak(one)) == ["primary:rate_limited", "backup:success"]
            await sync(one)
            await refresh(two)
            assert kinds(await speak(two)) == ["primary:skipped", "backup:success"]
            cooldown = breaker_of(two, "primary").snapshot().cooldown_until
            assert cooldown is not None
            assert cooldown - anyio.current_time() > 25
            assert breaker_of(two, "primary").state is BreakerState.CLOSED  # rests, not a failure


@needs_redis
async def test_cancelled_probe_gives_its_fleet_permit_back(
    redis_server: RedisServer, prefix: str
) -> None:
    """A caller that cancels a probe frees the fleet-wide permit at once, not when it expires."""
    async with (
        FakeSpeechServer(name="primary", fault=Fault.hang()) as primary,
        FakeSpeechServer(name="backup") as backup,
    ):
        one = shared_client([primary, backup], redis_server.url, prefix, first_byte_timeout=30)
        async with one:
            breaker = breaker_of(one, "primary")
            breaker.force_open(0.0, reason="test")
            with anyio.move_on_after(0.5):
                await speak(one)
            assert primary.hits == 1
            await sync(one)  # the release has reached Redis
            assert breaker.snapshot().probes_in_flight == 0
            assert redis_server.client().zcard(probes_key(prefix)) == 0


@needs_redis
async def test_healthy_requests_do_not_wait_for_redis_each_time(
    redis_server: RedisServer, prefix: str
) -> None:
    """With a healthy pool, the store is read at most once per sync interval, not per request."""
    async with (
        FakeSpeechServer(name="primary") as primary,
        FakeSpeechServer(name="backup") as backup,
    ):
        client = shared_client([primary, backup], redis_server.url, prefix, redis_sync_interval=60)
        async with client:
            for _ in range(50):
                await speak(client)
            stats = dataclasses.replace(client._shared.stats)  # type: ignore[union-attr]
    assert stats.reads == 1
    assert stats.calls == 1


@needs_redis
async def test_redis_stopped_mid_run_and_restarted_no_request_fails(
    own_redis_server: RedisServer, prefix: str
) -> None:
    """Redis goes away and comes back under load: every request succeeds, sharing resumes."""
    async with (
        FakeSpeechServer(name="primary") as primary,
        FakeSpeechServer(name="backup") as backup,
    ):
        client = shared_client(
            [primary, backup], own_redis_server.url, prefix, redis_sync_interval=0.01
        )
        failures: list[BaseException] = []
        served = Progress()

        async def load(stop: anyio.Event) -> None:
            while not stop.is_set():
                try:
                    await speak(client)
                    served.step()
                except Exception as exc:
                    failures.append(exc)

        async with client:
            shared = client._shared
            assert shared is not None
            stop = anyio.Event()
            async with anyio.create_task_group() as group:
                for _ in range(8):
                    group.start_soon(load, stop)
                await served.reach(20)
                await anyio.to_thread.run_sync(own_redis_server.stop)
                await wait_until(lambda: not shared.healthy)
                await served.reach(served.count + 40)  # requests flow on local state
                await anyio.to_thread.run_sync(own_redis_server.start)
                await wait_until(lambda: shared.healthy)  # reconnected by itself
                await served.reach(served.count + 20)
                stop.set()
            # Sharing works again: a trip reaches the fresh, empty Redis.
            breaker_of(client, "primary").force_open(60, reason="after restart")
            await sync(client)
        state = own_redis_server.client().hget(f"{prefix}:kokoro:primary:state", "state")
    assert failures == []
    assert state == "open"


@needs_redis
async def test_a_hung_redis_costs_at_most_the_timeout(
    own_redis_server: RedisServer, prefix: str
) -> None:
    """A Redis that stops answering (SIGSTOP) delays requests by the store timeout at most."""
    async with (
        FakeSpeechServer(name="primary") as primary,
        FakeSpeechServer(name="backup") as backup,
    ):
        client = shared_client(
            [primary, backup],
            own_redis_server.url,
            prefix,
            redis_sync_interval=0.001,
            redis_timeout=0.1,
        )
        async with client:
            await speak(client)
            own_redis_server.pause()
            try:
                slowest = 0.0
                for _ in range(20):
                    started = time.monotonic()
                    speech = await speak(client)
                    slowest = max(slowest, time.monotonic() - started)
                    assert speech.deployment == "primary"
                assert client._shared is not None
                assert not client._shared.healthy
            finally:
                own_redis_server.resume()
    assert slowest < 1.0  # two timeouts at most (0.2 s) plus the request itself


async def test_a_missing_redis_fails_no_request(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing listens at the Redis URL: requests are served on local state, one warning says
    so, and it never shows the password."""
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    async with FakeSpeechServer(name="primary") as primary:
        client = shared_client([primary], url, prefix)
        async with client:
            for _ in range(5):
                assert (await speak(client)).deployment == "primary"
    warnings = [r.getMessage() for r in caplog.records if "shared breaker state" in r.getMessage()]
    assert len(warnings) == 1
    assert "going on with local state" in warnings[0]
    assert "hunter2" not in caplog.text


def test_the_redis_url_is_a_secret_and_is_validated() -> None:
    """A bad URL is a ConfigurationError that never shows the password; reprs never do."""
    with pytest.raises(ConfigurationError, match="redis_url") as caught:
        SpeechClient(models={}, redis_url="http://:hunter2@host:6379")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ConfigurationError) as caught:
        SpeechClient(models={}, redis_url="redis://:hunter2@host:port/0")
    assert "hunter2" not in str(caught.value)
    client = SpeechClient(models={}, redis_url="redis://:hunter2@127.0.0.1:6379/0")
    assert "hunter2" not in repr(client.settings)
    assert "hunter2" not in repr(client._shared) + repr(client._shared._store)  # type: ignore[union-attr]


async def sync(client: SpeechClient) -> None:
    """Wait until what this client published has reached Redis."""
    assert client._shared is not None
    await client._shared.sync()


async def refresh(client: SpeechClient) -> None:
    """Make this client read the fleet's state now: "at once" exactly, not within one
    sync interval, so that tests need not wait for time to pass."""
    assert client._shared is not None
    await client._shared.refresh()


class Progress:
    """Counts steps made by other tasks; `reach` waits for a count without polling."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = anyio.Event()

    def step(self) -> None:
        self.count += 1
        self._changed.set()
        self._changed = anyio.Event()

    async def reach(self, count: int, seconds: float = 15.0) -> None:
        with anyio.fail_after(seconds):
            while self.count < count:
                await self._changed.wait()


async def wait_until(condition: Callable[[], bool], seconds: float = 15.0) -> None:
    """Poll ``condition`` (bounded). Only for state a worker thread changes, which can set no
    anyio event: the store's health."""
    with anyio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 (see above)
            await anyio.sleep(0.005)


# -- the child process -----------------------------------------------------------------------


async def _child_main(config: dict[str, Any]) -> None:
    policy = BreakerPolicy(
        consecutive_failures=config.get("consecutive_failures", 5),
        half_open_probes=config.get("half_open_probes", 1),
    )
    os.environ["RESILIENT_TTS_REDIS_PREFIX"] = config["prefix"]
    os.environ["RESILIENT_TTS_REDIS_SYNC_INTERVAL"] = str(config["sync_interval"])
    client = SpeechClient(
        models={"kokoro": config["deployments"]},
        redis_url=config["redis_url"],
        breaker=policy,
        transport="httpx",
        first_byte_timeout=5,
        deadline=20,
        breaker_open_seconds=60,
    )
    async with client:
        while True:
            line = await anyio.to_thread.run_sync(sys.stdin.readline)
            if not line:
                return
            command = json.loads(line)
            op = command["op"]
            if op == "quit":
                answer: Any = "bye"
            elif op == "ping":
                answer = "pong"
            elif op == "state":
                answer = client._live_pools()["kokoro"].deployments[0].breaker.state.value
            else:
                # The parent sends this after it saw the other processes' answers: read the
                # fleet's state first, so "at once" is exact rather than within an interval.
                await refresh(client)
                answer = [kinds(await speak(client)) for _ in range(command.get("n", 1))]
                # Answer once what this process learned has reached Redis, as a causal
                # order for the test: the parent's next command follows from this answer.
                await sync(client)
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
            if op == "quit":
                return


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    anyio.run(_child_main, json.loads(sys.argv[3]), backend=sys.argv[2])
