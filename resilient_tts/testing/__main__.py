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
from ._faults import FAULT_SYNTAX, Fault, parse_fault
from ._server import FakeSpeechServer, loopback_host


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
