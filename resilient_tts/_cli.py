"""The ``resilient-tts`` command line (also ``python -m resilient_tts``).

::

    resilient-tts demo                                  # watch failover, nothing to configure
    resilient-tts say "Hello there." -o hello.mp3       # synthesize with failover
    echo "Long text..." | resilient-tts say - -o out.wav --voice alloy
    resilient-tts status                                # probe every deployment
    resilient-tts config check                          # validate the configuration
    resilient-tts config import-litellm litellm.yaml > tts.toml

Configuration comes from ``RESILIENT_TTS_*`` variables, `.env` and the settings file, as for
`SpeechClient()`. Exit status: 0 success, 1 synthesis (or a probe) failed, 2 usage or
configuration error, with a one-line message on stderr and no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

import anyio

from ._client import SpeechClient
from ._config._settings import ENV_PREFIX, Settings
from ._config._values import ALL_FORMATS, Deployment, Pool
from ._core._records import AttemptOutcome
from ._core._retry import RetryPolicy
from ._exceptions import (
    ConfigurationError,
    InvalidRequestError,
    ResilientTTSError,
    UnknownDeploymentError,
)
from ._observe._events import AttemptFailed, AttemptSucceeded, Event
from ._response import SpeechResponse

__all__ = ["main"]

PROG = "resilient-tts"
OK, FAILED, USAGE = 0, 1, 2
_SUFFIX_FORMATS = {f".{f}": f for f in ALL_FORMATS} | {".ogg": "opus", ".m4a": "aac", ".raw": "pcm"}


class _UsageError(Exception):
    """A mistake on the command line that argparse cannot see (exit 2)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    _configure_logging(args.verbose, quiet=args.command == "demo")
    try:
        status: int = args.run(args)
    except (_UsageError, ConfigurationError, InvalidRequestError, UnknownDeploymentError) as exc:
        return _fail(USAGE, exc)
    except ResilientTTSError as exc:
        return _fail(FAILED, exc)
    except OSError as exc:  # the audio could not be written, a pipe closed, ...
        return _fail(FAILED, exc)
    except KeyboardInterrupt:
        return 130
    return status


def _fail(status: int, exc: BaseException) -> int:
    # One line: a multi-problem ConfigurationError lists its problems separated by "; ".
    first, *rest = [line.strip() for line in str(exc).splitlines() if line.strip()] or [repr(exc)]
    message = f"{first} {'; '.join(rest)}" if first.endswith(":") else "; ".join([first, *rest])
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Resilient text-to-speech over OpenAI-compatible deployments, with failover.",
        epilog="Configured by RESILIENT_TTS_* variables, .env and RESILIENT_TTS_CONFIG_FILE.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv: debug)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    say = commands.add_parser("say", help="synthesize text to an audio file, with failover")
    say.add_argument("text", help="the text to speak, or - to read it from standard input")
    say.add_argument("-o", "--output", required=True, help="audio file to write, or - for stdout")
    say.add_argument("--model", help="logical model (default: the only one configured)")
    say.add_argument("--voice", default="alloy", help="logical voice (default: %(default)s)")
    say.add_argument(
        "--format", choices=ALL_FORMATS, help="audio format (default: from the file name, else mp3)"
    )
    say.add_argument("--speed", type=float, help="0.25 to 4.0")
    say.add_argument("--instructions", help="voice instructions, for deployments that take them")
    say.add_argument("--timeout", type=float, help="deadline in seconds for the whole request")
    say.set_defaults(run=_run_say)

    status = commands.add_parser("status", help="probe every deployment: state and latency")
    status.add_argument("--probe", choices=("speech", "models"), default="speech", help=_PROBE_HELP)
    status.add_argument(
        "--timeout", type=float, default=10.0, help="seconds per probe (default: %(default)s)"
    )
    status.add_argument(
        "--voice", default="alloy", help="voice for speech probes (default: %(default)s)"
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(run=_run_status)

    config = commands.add_parser("config", help="check or import configuration")
    config_commands = config.add_subparsers(
        dest="config_command", required=True, metavar="SUBCOMMAND"
    )
    check = config_commands.add_parser(
        "check", help="validate the configuration and print the pools"
    )
    check.set_defaults(run=_run_config_check)
    litellm = config_commands.add_parser("import-litellm", help="translate a LiteLLM proxy config")
    litellm.add_argument("path", help="the LiteLLM config file (YAML)")
    litellm.add_argument(
        "--format",
        choices=("toml", "json", "env"),
        default="toml",
        help="toml: a settings file (default); json: RESILIENT_TTS_MODELS alone; env: .env lines",
    )
    litellm.set_defaults(run=_run_import_litellm)

    demo = commands.add_parser(
        "demo", help="watch failover between local fake deployments (no setup)"
    )
    demo.add_argument(
        "--requests", type=int, default=30, help="requests to send (default: %(default)s)"
    )
    demo.add_argument(
        "--out", type=Path, default=Path("resilient-tts-demo"), help="directory for the audio files"
    )
    demo.add_argument("--quick", action="store_true", help="pace requests 5x faster")
    demo.set_defaults(run=_run_demo)
    return parser


_PROBE_HELP = (
    "speech: synthesize a word (default); models: GET {base_url}/models, costs no GPU time"
)


def _configure_logging(verbose: int, *, quiet: bool) -> None:
    # The demo shows every attempt in its table; log lines would repeat them.
    if verbose:
        level = logging.DEBUG if verbose > 1 else logging.INFO
    else:
        level = logging.CRITICAL if quiet else logging.ERROR
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    logger = logging.getLogger("resilient_tts")
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


# -- say -------------------------------------------------------------------------------------


def _run_say(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.text == "-" else args.text
    to_stdout = args.output == "-"
    output = None if to_stdout else Path(args.output)
    if output is not None and not output.parent.is_dir():
        raise _UsageError(f"cannot write {args.output}: no such directory {str(output.parent)!r}")
    response_format = (
        args.format or (output and _SUFFIX_FORMATS.get(output.suffix.lower())) or "mp3"
    )
    report = sys.stderr if to_stdout else sys.stdout
    speech = anyio.run(_say, args, text, response_format)
    if output is None:
        sys.stdout.buffer.write(speech.content)
        sys.stdout.buffer.flush()
    else:
        speech.write_to_file(output)
    _report_speech(speech, args.output, report)
    return OK


async def _say(args: argparse.Namespace, text: str, response_format: Any) -> SpeechResponse:
    progress = _Progress(sys.stderr, len(text))
    async with SpeechClient(hooks=[progress]) as client:
        model = args.model or _only_model(client.settings)
        speech = await client.audio.speech.create(
            model=model,
            voice=args.voice,
            input=text,
            response_format=response_format,
            speed=args.speed,
            instructions=args.instructions,
            timeout=args.timeout,
        )
    progress.done()
    return speech


def _only_model(settings: Settings) -> str:
    models = list(settings.models)
    if len(models) == 1:
        return models[0]
    if not models:
        raise ConfigurationError(
            f"no models configured: set {ENV_PREFIX}MODELS (see `{PROG} config check`)"
        )
    raise _UsageError(
        f"several models are configured ({', '.join(models)}); choose one with --model"
    )


def _report_speech(speech: SpeechResponse, where: str, out: TextIO) -> None:
    length = f"{speech.duration:.2f}s of " if speech.duration else ""
    name = "stdout" if where == "-" else where
    print(
        f"{name}: {length}{speech.response_format}, {len(speech.content):,} bytes,"
        f" from {speech.deployment}",
        file=out,
    )
    tried = [a for a in speech.attempts if a.outcome is not AttemptOutcome.SUCCESS]
    if tried:
        story = "; ".join(
            f"{a.deployment} {a.kind.value if a.kind else a.outcome.value}" for a in tried
        )
        print(f"  before that: {story}", file=out)


class _Progress:
    """A progress line on a terminal for long texts: each served part advances it."""

    def __init__(self, out: TextIO, characters: int) -> None:
        self._out = out
        self._live = characters > 1000 and out.isatty()
        self._parts = 0
        if self._live:
            print(f"synthesizing {characters:,} characters ...", file=out, flush=True)

    def __call__(self, event: Event) -> None:
        if not self._live:
            return
        if isinstance(event, AttemptSucceeded):
            self._parts += 1
            print(
                f"\r  {self._parts} part(s) done, last from {event.deployment}   ",
                end="",
                file=self._out,
                flush=True,
            )
        elif isinstance(event, AttemptFailed):
            print(
                f"\r  {event.deployment} failed ({event.kind.value}); failing over   ",
                end="",
                file=self._out,
                flush=True,
            )

    def done(self) -> None:
        if self._live:
            print(file=self._out, flush=True)


# -- status ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Probe:
    pool: str
    deployment: str
    url: str
    up: bool
    latency: float | None
    detail: str

    def row(self) -> list[str]:
        latency = f"{self.latency * 1000:.0f} ms" if self.latency is not None else "-"
        return [self.pool, self.deployment, "up" if self.up else "down", latency, self.detail]


def _run_status(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        raise _UsageError("--timeout must be > 0")
    settings = SpeechClient().settings
    if not settings.models:
        raise ConfigurationError(
            f"no models configured: set {ENV_PREFIX}MODELS (see `{PROG} config check`)"
        )
    probes = anyio.run(_probe_all, settings, args)
    if args.json:
        print(json.dumps([probe.__dict__ for probe in probes], indent=2))
    else:
        _print_table(
            ["POOL", "DEPLOYMENT", "STATE", "LATENCY", "DETAIL"], [p.row() for p in probes]
        )
    return OK if all(probe.up for probe in probes) else FAILED


async def _probe_all(settings: Settings, args: argparse.Namespace) -> list[_Probe]:
    jobs = [
        (name, deployment)
        for name, pool in settings.models.items()
        for deployment in pool.deployments
    ]
    results: list[_Probe | None] = [None] * len(jobs)

    async def run(index: int, pool: str, deployment: Deployment) -> None:
        probe = _probe_models if args.probe == "models" else _probe_speech
        results[index] = await probe(pool, deployment, settings, args)

    async with anyio.create_task_group() as group:
        for index, (pool, deployment) in enumerate(jobs):
            group.start_soon(run, index, pool, deployment)
    return [r for r in results if r is not None]


async def _probe_speech(
    pool: str, deployment: Deployment, settings: Settings, args: argparse.Namespace
) -> _Probe:
    """One tiny synthesis on this deployment alone: no retry, no failover."""
    first_bytes: list[float] = []

    def on_event(event: Event) -> None:
        if isinstance(event, AttemptSucceeded) and event.first_byte is not None:
            first_bytes.append(event.first_byte)

    url = _safe_url(deployment.base_url)
    client = SpeechClient(
        models={"probe": Pool(deployments=(deployment,))},
        deadline=args.timeout,
        first_byte_timeout=min(args.timeout, settings.first_byte_timeout),
        attempt_timeout=args.timeout,
        retry=RetryPolicy(budget_capacity=0.0),
        hooks=[on_event],
    )
    try:
        async with client:
            speech = await client.audio.speech.create(
                model="probe", voice=args.voice, input="ok", response_format=deployment.formats[0]
            )
    except ResilientTTSError as exc:
        attempts = getattr(exc, "attempts", ())
        last = attempts[-1] if attempts else None
        detail = f"{last.kind.value}: {last.error}" if last is not None and last.kind else str(exc)
        return _Probe(pool, deployment.name, url, False, None, _short(detail))
    latency = first_bytes[0] if first_bytes else speech.attempts[-1].elapsed
    return _Probe(
        pool,
        deployment.name,
        url,
        True,
        latency,
        f"first byte; {speech.response_format} from {url}",
    )


async def _probe_models(
    pool: str, deployment: Deployment, settings: Settings, args: argparse.Namespace
) -> _Probe:
    """GET {base_url}/models: proves the server answers and the key is accepted."""
    import openai

    from ._engine._http import build_openai_client, choose_transport

    url = _safe_url(deployment.base_url)
    client = build_openai_client(deployment, transport=choose_transport(settings.transport))
    started = anyio.current_time()
    try:
        with anyio.fail_after(args.timeout):
            models = await client.models.list()
    except TimeoutError:
        return _Probe(
            pool, deployment.name, url, False, None, f"no answer within {args.timeout:g}s"
        )
    except openai.APIStatusError as exc:
        return _Probe(
            pool, deployment.name, url, False, None, f"HTTP {exc.status_code} from {url}/models"
        )
    except (openai.APIError, OSError) as exc:
        return _Probe(
            pool, deployment.name, url, False, None, _short(f"{type(exc).__name__}: {exc}")
        )
    finally:
        with anyio.CancelScope(shield=True):
            await client.close()
    latency = anyio.current_time() - started
    known = [model.id for model in models.data]
    note = (
        "" if not known or deployment.model in known else f"; model {deployment.model!r} not listed"
    )
    return _Probe(pool, deployment.name, url, True, latency, f"{len(known)} models{note}")


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _safe_url(url: str) -> str:
    """The URL without query or fragment, which could carry a token."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


# -- config ----------------------------------------------------------------------------------


def _run_config_check(args: argparse.Namespace) -> int:
    settings = SpeechClient().settings
    if not settings.models:
        raise ConfigurationError(f"no models configured: set {ENV_PREFIX}MODELS or a settings file")
    source = os.environ.get(f"{ENV_PREFIX}CONFIG_FILE")
    print("configuration OK")
    print(
        f"settings file: {settings.config_file or 'none'}"
        + (f" ({ENV_PREFIX}CONFIG_FILE)" if source else "")
    )
    print(
        f"deadline {settings.deadline:g}s, attempt timeout {settings.attempt_timeout:g}s, "
        f"first byte {settings.first_byte_timeout:g}s, stall {settings.stall_timeout:g}s, "
        f"breaker open {settings.breaker_open_seconds:g}s, sample rate {settings.sample_rate}, "
        f"transport {settings.transport}"
    )
    for name, pool in settings.models.items():
        print()
        print(f"model {name!r}: {len(pool.deployments)} deployment(s), first preferred")
        for number, deployment in enumerate(pool.deployments, 1):
            _print_deployment(number, deployment)
    return OK


def _print_deployment(number: int, deployment: Deployment) -> None:
    # Never any part of a key: only whether there is one.
    key = "set" if deployment.api_key is not None else "none"
    print(
        f"  {number}. {deployment.name}  {_safe_url(deployment.base_url)}"
        f"  model={deployment.model}  api_key: {key}"
    )
    details = [f"formats: {','.join(deployment.formats)}", f"sample rate {deployment.sample_rate}"]
    if deployment.voices:
        details.append("voices: " + ", ".join(f"{k}->{v}" for k, v in deployment.voices.items()))
    overrides = {
        "deadline": deployment.deadline,
        "attempt timeout": deployment.attempt_timeout,
        "first byte": deployment.first_byte_timeout,
        "stall": deployment.stall_timeout,
        "breaker open": deployment.breaker_open_seconds,
    }
    details += [f"{label} {value:g}s" for label, value in overrides.items() if value is not None]
    print(f"     {'; '.join(details)}")


def _run_import_litellm(args: argparse.Namespace) -> int:
    from ._config._litellm import import_litellm_config

    imported = import_litellm_config(args.path)
    for warning in imported.warnings:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    rendered = {"toml": imported.to_toml, "json": imported.to_json, "env": imported.to_env}[
        args.format
    ]()
    print(rendered, end="" if rendered.endswith("\n") else "\n")
    return OK


# -- demo ------------------------------------------------------------------------------------


def _run_demo(args: argparse.Namespace) -> int:
    from ._demo import DemoOptions, run_demo

    if args.requests < 5:
        raise _UsageError("--requests must be at least 5, so every phase of the demo gets some")
    # Self-contained: the user's own configuration must not change (or break) the demo.
    for name in [n for n in os.environ if n.upper().startswith(ENV_PREFIX)]:
        del os.environ[name]
    options = DemoOptions(requests=args.requests, out=args.out, quick=args.quick)

    def write(line: str) -> None:
        print(line, flush=True)

    failed = anyio.run(run_demo, options, write)
    return OK if failed == 0 else FAILED
