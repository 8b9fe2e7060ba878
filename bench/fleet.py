"""A fleet of client processes against a primary that dies and recovers: shared state or not.

Runs the same scenario twice, first with breaker state per process, then shared through Redis,
and prints both and their ratio:

1. ``--processes`` workers (default 20), each its own `SpeechClient` and its own process, send
   requests one after another to a pool of two fake deployments, primary first;
2. the primary dies (every request gets a 503; ``--death`` picks another fault) for
   ``--dead`` seconds, then recovers;
3. counted: attempts that reached the dead primary (the waste), probes the primary got once
   it recovered, and requests that failed (should be none: the backup is healthy).

    python -m bench.fleet                    # about two minutes; starts its own redis-server
    python -m bench.fleet --redis-url redis://127.0.0.1:6379/0 --processes 10 --dead 10

The servers run in this process; workers are ``python -m bench.fleet worker CONFIG``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from resilient_tts import BreakerPolicy, SpeechClient
from resilient_tts._fleet._shared_state import SharedStats
from resilient_tts._observe._events import BreakerTransitioned, Event
from resilient_tts.testing import FakeSpeechServer, Fault

# How the primary dies: every one of these reaches the server, so the server counts it.
DEATHS = {
    "503": Fault.status(503),  # overloaded; retried once by each request
    "500": Fault.status(500),
    "reset": Fault.reset(),  # crashes on each request
    "not-audio": Fault.not_audio("html"),  # a proxy's error page with a 200
}

PROBE_SETTLED = ("probe succeeded", "probe failed")
GROWTH = 4  # the open time grows up to this many times RESILIENT_TTS_BREAKER_OPEN_SECONDS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class FleetRun:
    """One run of the scenario."""

    shared: bool
    processes: int
    requests: int = 0
    failed: int = 0
    wasted: int = 0  # attempts that reached the primary while it was dead
    recovery_probes: int = 0  # probes the primary got after it recovered
    store_calls: int = 0
    store_waits: int = 0  # requests that waited for Redis
    seconds: float = 0.0

    def line(self) -> str:
        mode = "shared through Redis" if self.shared else "per process         "
        calls = (
            f"; Redis: {self.store_calls / self.processes / self.seconds:.1f} calls/s per "
            f"process, {self.store_waits} of {self.requests} requests waited for it"
            if self.shared
            else ""
        )
        return (
            f"  {mode}: {self.wasted:4d} attempts on the dead primary, "
            f"{self.recovery_probes:3d} probes on recovery, "
            f"{self.requests} requests, {self.failed} failed{calls}"
        )


async def run_fleet(
    *, shared: bool, processes: int, redis_url: str, death: str, dead: float, open_seconds: float
) -> FleetRun:
    run = FleetRun(shared, processes)
    death_fault = DEATHS[death]
    async with (
        FakeSpeechServer(name="primary") as primary,
        FakeSpeechServer(name="backup") as backup,
    ):
        config = {
            "deployments": [
                {"name": s.name, "base_url": s.base_url, "model": s.model}
                for s in (primary, backup)
            ],
            "redis_url": redis_url if shared else None,
            "prefix": f"fleet_{uuid.uuid4().hex[:8]}",
            "open_seconds": open_seconds,
        }
        async with workers(processes, config) as fleet:
            await tell(fleet, "go")  # answered once each worker was served once
            started = time.monotonic()
            await anyio.sleep(1.0)  # healthy traffic first
            before = primary.hits
            primary.set_fault(death_fault)
            await anyio.sleep(dead)
            primary.set_fault(Fault.ok())
            recovered_at = time.time()
            run.wasted = primary.hits - before
            # Every breaker reopens within its longest open time (plus jitter), then probes.
            await anyio.sleep(open_seconds * GROWTH * 1.25 + 1.0)
            results = await tell(fleet, "stop")
            run.seconds = time.monotonic() - started
    for result in results:
        run.requests += result["requests"]
        run.failed += result["failed"]
        run.store_calls += result["store_calls"]
        run.store_waits += result["store_waits"]
        run.recovery_probes += sum(1 for at in result["probe_times"] if at >= recovered_at)
    return run


# -- workers ---------------------------------------------------------------------------------


@dataclass
class Worker:
    process: anyio.abc.Process
    stdout: BufferedByteReceiveStream


async def tell(fleet: list[Worker], command: str) -> list[Any]:
    """Send ``command`` to every worker; their one-line JSON answers."""
    answers: list[Any] = [None] * len(fleet)

    async def one(index: int) -> None:
        worker = fleet[index]
        assert worker.process.stdin is not None
        await worker.process.stdin.send(command.encode() + b"\n")
        with anyio.fail_after(120):
            answers[index] = json.loads(await worker.stdout.receive_until(b"\n", 1 << 20))

    async with anyio.create_task_group() as group:
        for index in range(len(fleet)):
            group.start_soon(one, index)
    return answers


@contextlib.asynccontextmanager
async def workers(count: int, config: dict[str, Any]) -> AsyncIterator[list[Worker]]:
    command = [sys.executable, "-m", "bench.fleet", "worker", json.dumps(config)]
    env = {key: value for key, value in os.environ.items() if not key.startswith("RESILIENT_TTS_")}
    fleet: list[Worker] = []
    try:
        for _ in range(count):
            process = await anyio.open_process(command, cwd=ROOT, env=env, stderr=None)
            assert process.stdout is not None
            fleet.append(Worker(process, BufferedByteReceiveStream(process.stdout)))
        await tell(fleet, "ready")
        yield fleet
    finally:
        with anyio.CancelScope(shield=True):
            for worker in fleet:
                if worker.process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker.process.pid, signal.SIGTERM)
                with anyio.move_on_after(10):
                    await worker.process.wait()
                if worker.process.returncode is None:
                    os.kill(worker.process.pid, signal.SIGKILL)
                    await worker.process.wait()
                await worker.process.aclose()


async def worker_main(config: dict[str, Any]) -> None:
    """One fleet member: requests one after another until told to stop."""
    probe_times: list[float] = []

    def on_event(event: Event) -> None:
        # A probe is an attempt admitted while half-open; it settles as one of these two.
        probe = isinstance(event, BreakerTransitioned) and event.reason in PROBE_SETTLED
        if probe and event.deployment == "primary":
            probe_times.append(time.time())

    logging.getLogger("resilient_tts").setLevel(logging.ERROR)  # twenty processes talk a lot
    if config["redis_url"]:
        os.environ["RESILIENT_TTS_REDIS_PREFIX"] = config["prefix"]
    client = SpeechClient(
        models={"kokoro": config["deployments"]},
        redis_url=config["redis_url"],
        transport="httpx",
        breaker_open_seconds=config["open_seconds"],
        breaker=BreakerPolicy(
            open_seconds=config["open_seconds"], max_open_seconds=config["open_seconds"] * GROWTH
        ),
        hooks=[on_event],
        first_byte_timeout=2.0,
        deadline=20.0,
    )
    counts = {"requests": 0, "failed": 0}
    stop = anyio.Event()
    served = anyio.Event()

    async def load() -> None:
        while not stop.is_set():
            try:
                await client.audio.speech.create(
                    model="kokoro", voice="alloy", input="Hello there.", response_format="wav"
                )
            except Exception:
                counts["failed"] += 1
            counts["requests"] += 1
            served.set()
            await anyio.sleep(0.05)

    async def answer(value: Any) -> None:
        sys.stdout.write(json.dumps(value) + "\n")
        sys.stdout.flush()

    async with client, anyio.create_task_group() as group:
        while True:
            line = (await anyio.to_thread.run_sync(sys.stdin.readline)).strip()
            if line == "ready":
                await answer("ready")
            elif line == "go":
                group.start_soon(load)
                await served.wait()
                await answer("going")
            else:  # "stop", or the parent went away
                stop.set()
                break
        stats = client._shared.stats if client._shared is not None else SharedStats()
    await answer(
        {
            **counts,
            "probe_times": probe_times,
            "store_calls": stats.calls,
            "store_waits": stats.waits,
        }
    )


# -- redis-server ----------------------------------------------------------------------------


@contextlib.contextmanager
def own_redis_server() -> Iterator[str]:
    """A throwaway ``redis-server`` on a free loopback port, stopped by its PID."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit(
            "redis-server is not installed: apt-get install redis-server, or pass --redis-url"
        )
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", port), timeout=1),
            ):
                break
            if time.monotonic() > deadline:
                raise SystemExit("redis-server did not start")
            time.sleep(0.01)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["worker"]:
        anyio.run(worker_main, json.loads(args[1]))
        return 0
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=20)
    parser.add_argument("--dead", type=float, default=30.0, help="seconds the primary stays dead")
    parser.add_argument(
        "--death", choices=sorted(DEATHS), default="503", help="how the primary dies"
    )
    parser.add_argument(
        "--open-seconds", type=float, default=2.0, help="RESILIENT_TTS_BREAKER_OPEN_SECONDS"
    )
    parser.add_argument("--redis-url", help="use this Redis instead of starting a redis-server")
    options = parser.parse_args(args)
    with contextlib.ExitStack() as stack:
        redis_url = options.redis_url or stack.enter_context(own_redis_server())
        scenario = functools.partial(
            run_fleet,
            processes=options.processes,
            redis_url=redis_url,
            death=options.death,
            dead=options.dead,
            open_seconds=options.open_seconds,
        )
        runs = [anyio.run(functools.partial(scenario, shared=shared)) for shared in (False, True)]
    alone, shared = runs
    print(
        f"fleet of {options.processes} processes; primary dead ({options.death}) "
        f"for {options.dead:g} s, breaker open {options.open_seconds:g} s "
        f"growing to {options.open_seconds * GROWTH:g} s"
    )
    print(alone.line())
    print(shared.line())
    print(
        f"  shared state: {alone.wasted / max(1, shared.wasted):.1f}x fewer wasted attempts, "
        f"{alone.recovery_probes / max(1, shared.recovery_probes):.1f}x fewer probes on recovery"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
