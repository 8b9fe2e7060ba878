"""Run one fake speech server until Ctrl-C or SIGTERM.

``python -m resilient_tts.testing --port 8880 --fault status:503:2`` prints the base URL on one
line, then serves.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

import anyio

from ._audio import FORMATS
from ._faults import NOT_AUDIO_KINDS, Fault
from ._server import FakeSpeechServer, loopback_host

FAULT_SYNTAX = (
    "ok | refuse | hang | reset | slow:SECONDS | stall:BYTES[:SECONDS] | cut:BYTES | "
    "truncated:BYTES | "
    "status:CODE[:RETRY_AFTER] | model-not-found[:MODEL] | unauthorized | not-found | "
    "insufficient-quota | rate-limited[:RETRY_AFTER] | unsupported-voice | unsupported-format | "
    "not-audio:json|html|empty|garbage | wrong-format:FORMAT | flapping:DOWN[:UP] | "
    "fail-times:N:FAULT | after:N:FAULT"
)


def parse_fault(spec: str) -> Fault:
    """Parse the command line's fault syntax (`FAULT_SYNTAX`), e.g. ``status:503:2``."""
    name, _, rest = spec.strip().partition(":")
    args = rest.split(":") if rest else []
    try:
        fault = _parse(name.lower(), args, rest)
    except (ValueError, IndexError) as exc:
        raise ValueError(f"bad fault {spec!r} ({exc}); expected {FAULT_SYNTAX}") from exc
    if fault is None:
        raise ValueError(f"unknown fault {spec!r}; expected {FAULT_SYNTAX}")
    return fault


def _parse(name: str, args: list[str], rest: str) -> Fault | None:
    def opt_float(index: int) -> float | None:
        return float(args[index]) if len(args) > index else None

    simple = {
        "ok": Fault.ok,
        "refuse": Fault.refuse,
        "hang": Fault.hang,
        "reset": Fault.reset,
        "unauthorized": Fault.unauthorized,
        "not-found": Fault.not_found,
        "insufficient-quota": Fault.insufficient_quota,
        "unsupported-voice": Fault.unsupported_voice,
        "unsupported-format": Fault.unsupported_format,
    }
    if name in simple and not args:
        return simple[name]()
    if name == "slow":
        return Fault.slow_first_byte(float(args[0]))
    if name == "stall":
        return Fault.stall(int(args[0]), opt_float(1))
    if name == "cut":
        return Fault.cut(int(args[0]))
    if name == "truncated":
        return Fault.truncated(int(args[0]))
    if name == "status":
        return Fault.status(int(args[0]), retry_after=opt_float(1))
    if name == "model-not-found":
        return Fault.model_not_found(*args[:1])
    if name == "rate-limited":
        return Fault.rate_limited(opt_float(0))
    if name == "not-audio":
        kind = args[0] if args else "json"
        if kind not in NOT_AUDIO_KINDS:
            raise ValueError(f"not-audio kind must be json, html, empty or garbage, got {kind!r}")
        return Fault.not_audio(NOT_AUDIO_KINDS[kind])
    if name == "wrong-format":
        return Fault.wrong_format(args[0])
    if name == "flapping":
        return Fault.flapping(float(args[0]), up_seconds=opt_float(1))
    if name == "fail-times":
        count, _, inner = rest.partition(":")
        return Fault.fail_times(int(count), parse_fault(inner))
    if name == "after":
        count, _, inner = rest.partition(":")
        return Fault.after(int(count), parse_fault(inner))
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and serve until interrupted; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m resilient_tts.testing",
        description="Fault-injecting OpenAI-compatible TTS server on loopback.",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="loopback address (default %(default)s)"
    )
    parser.add_argument("--port", type=int, default=0, help="TCP port (default: any free port)")
    parser.add_argument("--fault", default="ok", help=FAULT_SYNTAX)
    parser.add_argument("--sample-rate", type=int, default=24000)
    parser.add_argument("--seconds-per-char", type=float, default=0.01)
    parser.add_argument("--name", default="fake-tts")
    parser.add_argument("--model", default="kokoro")
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated")
    parser.add_argument("--voices", default=None, help="comma-separated; default: any voice")
    parser.add_argument("--chunked", action="store_true", help="Transfer-Encoding: chunked")
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    args = parser.parse_args(argv)
    try:
        host = loopback_host(args.host)
        fault = parse_fault(args.fault)
        server = FakeSpeechServer(
            fault,
            host=host,
            port=args.port,
            sample_rate=args.sample_rate,
            seconds_per_char=args.seconds_per_char,
            name=args.name,
            model=args.model,
            formats=[f for f in args.formats.split(",") if f],
            voices=None if args.voices is None else [v for v in args.voices.split(",") if v],
            chunked=args.chunked,
        )
    except ValueError as exc:
        parser.error(str(exc))
    anyio.run(_serve, server, fault, backend=args.backend)
    return 0


async def _serve(server: FakeSpeechServer, fault: Fault) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with server:
            print(server.base_url, flush=True)
            async for _ in signals:
                return


if __name__ == "__main__":
    sys.exit(main())
