"""The `resilient-tts` command line, run as a real subprocess against loopback fake servers.

The fake servers run in this process, on an event loop in a background thread, so a test can
break or heal them while the command runs. Every subprocess is bounded by a timeout (and
killed by `subprocess.run` if it overruns). A few usage-error cases run `main()` in-process,
which is quicker and exercises the same code.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from resilient_tts import _cli
from resilient_tts.testing import FakeSpeechServer, Fault

TIMEOUT = 60
SECRET = "sk-cli-secret-4321"


class Servers:
    """Fake speech servers on an event loop in a background thread."""

    def __init__(self, portal: BlockingPortal, stack: ExitStack) -> None:
        self._portal = portal
        self._stack = stack

    def start(self, name: str, fault: Fault | None = None) -> FakeSpeechServer:
        server = FakeSpeechServer(fault, name=name)
        return self._stack.enter_context(self._portal.wrap_async_context_manager(server))

    def set_fault(self, server: FakeSpeechServer, fault: Fault) -> None:
        self._portal.call(server.set_fault, fault)


@pytest.fixture
def servers() -> Iterator[Servers]:
    with start_blocking_portal("asyncio") as portal, ExitStack() as stack:
        yield Servers(portal, stack)


def models_env(*servers: FakeSpeechServer, **extra: str) -> dict[str, str]:
    deployments = [
        {"name": s.name, "base_url": s.base_url, "model": s.model, "api_key": f"{SECRET}-{s.name}"}
        for s in servers
    ]
    return {"RESILIENT_TTS_MODELS": json.dumps({"kokoro": {"deployments": deployments}}), **extra}


def start_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path, stdin: bytes | None = None
) -> tuple[subprocess.Popen[bytes], bytes | None]:
    """Starts `python -m resilient_tts ARGS` with only the given RESILIENT_TTS_* variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RESILIENT_TTS_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "resilient_tts", *args],
        env={**clean, **(env or {})},
        cwd=cwd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    return process, stdin


def finish(
    started: tuple[subprocess.Popen[bytes], bytes | None],
) -> subprocess.CompletedProcess[bytes]:
    """Waits for a started command, bounded by TIMEOUT; an overrun is killed by its PID."""
    process, stdin = started
    try:
        out, err = process.communicate(stdin, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return finish(start_cli(*args, env=env, cwd=cwd, stdin=stdin))


def text(output: bytes) -> str:
    return output.decode("utf-8", "replace")


def assert_one_line_error(result: subprocess.CompletedProcess[bytes], contains: str) -> None:
    err = text(result.stderr)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("resilient-tts: error: ")
    assert contains in lines[0]
    assert SECRET not in err


def is_mp3(data: bytes) -> bool:
    return data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0)


def test_say_writes_valid_audio_and_names_who_answered(servers: Servers, tmp_path: Path) -> None:
    """`say` fails over from a dead primary, writes real audio, and says which deployment served."""
    primary = servers.start("primary", Fault.refuse())
    backup = servers.start("backup")
    env = models_env(primary, backup)
    started = [
        start_cli("say", "Hello there.", "-o", "hello.mp3", env=env, cwd=tmp_path),
        start_cli(
            "say", "Hello there.", "-o", "hello.wav", "--voice", "nova", env=env, cwd=tmp_path
        ),
    ]
    mp3, wav = (finish(command) for command in started)
    assert mp3.returncode == 0, text(mp3.stderr)
    assert is_mp3((tmp_path / "hello.mp3").read_bytes())
    out = text(mp3.stdout)
    assert "hello.mp3:" in out
    assert "mp3" in out
    assert "from backup" in out
    assert "before that: primary connect" in out
    assert wav.returncode == 0, text(wav.stderr)
    assert (tmp_path / "hello.wav").read_bytes()[:4] == b"RIFF"
    assert {r.params["voice"] for r in backup.requests} == {"alloy", "nova"}


def test_say_reads_stdin_and_writes_audio_to_stdout(servers: Servers, tmp_path: Path) -> None:
    """`say - -o -` pipes: text in, audio out; the report goes to stderr instead."""
    primary = servers.start("primary")
    result = run_cli(
        "say",
        "-",
        "-o",
        "-",
        "--format",
        "wav",
        env=models_env(primary),
        cwd=tmp_path,
        stdin=b"Piped.",
    )
    assert result.returncode == 0, text(result.stderr)
    assert result.stdout[:4] == b"RIFF"
    assert "from primary" in text(result.stderr)
    assert primary.requests[0].params["input"] == "Piped."


def test_say_exits_1_with_one_line_when_every_deployment_fails(
    servers: Servers, tmp_path: Path
) -> None:
    """Synthesis failing everywhere: exit 1, one line with the story, no traceback, no file."""
    primary = servers.start("primary", Fault.refuse())
    backup = servers.start("backup", Fault.status(500))
    result = run_cli("say", "Hi.", "-o", "out.mp3", env=models_env(primary, backup), cwd=tmp_path)
    assert result.returncode == 1
    assert_one_line_error(result, "every deployment of 'kokoro' failed")
    assert not (tmp_path / "out.mp3").exists()


@pytest.mark.parametrize(
    ("models", "contains"),
    [
        ('{"kokoro": {"deployments": [', "RESILIENT_TTS_MODELS: not valid JSON"),
        (
            json.dumps(
                {
                    "kokoro": {
                        "deployments": [
                            {"name": "a", "base_url": "nope", "model": "k", "api_key": SECRET}
                        ]
                    }
                }
            ),
            "RESILIENT_TTS_MODELS: kokoro.deployments[0].base_url",
        ),
    ],
    ids=["malformed-json", "bad-url-with-a-key"],
)
def test_bad_configuration_exits_2_with_a_clear_line(
    tmp_path: Path, models: str, contains: str
) -> None:
    """Bad configuration: exit 2, one line naming the variable and field, never the key."""
    env = {"RESILIENT_TTS_MODELS": models}
    result = run_cli("say", "Hi.", "-o", "x.mp3", env=env, cwd=tmp_path)
    assert result.returncode == 2, text(result.stderr)
    assert_one_line_error(result, contains)


def test_status_probes_each_deployment(servers: Servers, tmp_path: Path) -> None:
    """`status` shows each deployment up or down with its latency; exit 1 if any is down."""
    primary = servers.start("primary", Fault.refuse())
    backup = servers.start("backup")
    env = models_env(primary, backup)
    started = [
        start_cli("status", env=env, cwd=tmp_path),
        start_cli("status", "--json", "--probe", "models", env=env, cwd=tmp_path),
    ]
    table, as_json = (finish(command) for command in started)
    servers.set_fault(primary, Fault.ok())
    healthy = run_cli("status", "--probe", "models", env=env, cwd=tmp_path)
    assert table.returncode == 1, text(table.stderr)
    lines = text(table.stdout).splitlines()
    assert lines[0].split() == ["POOL", "DEPLOYMENT", "STATE", "LATENCY", "DETAIL"]
    assert lines[1].split()[:4] == ["kokoro", "primary", "down", "-"]
    assert "connect" in lines[1]
    assert lines[2].split()[:3] == ["kokoro", "backup", "up"]
    assert lines[2].split()[4] == "ms"
    assert as_json.returncode == 1
    probes = {p["deployment"]: p for p in json.loads(as_json.stdout)}
    assert probes["primary"]["up"] is False
    assert probes["backup"]["up"] is True
    assert healthy.returncode == 0, text(healthy.stdout)
    assert SECRET not in text(table.stdout) + text(as_json.stdout) + text(healthy.stdout)


def test_config_check_prints_pools_and_never_a_key(servers: Servers, tmp_path: Path) -> None:
    """`config check` lists every pool and deployment, with `api_key: set` and nothing more."""
    primary = servers.start("primary")
    keyless = json.dumps(
        {
            "tts-1": {
                "deployments": [
                    {"name": "local", "base_url": "http://127.0.0.1:9/v1", "model": "k"}
                ]
            }
        }
    )
    env = models_env(primary)
    env["RESILIENT_TTS_MODELS"] = json.dumps(
        {**json.loads(env["RESILIENT_TTS_MODELS"]), **json.loads(keyless)}
    )
    result = run_cli("config", "check", env={**env, "RESILIENT_TTS_DEADLINE": "20"}, cwd=tmp_path)
    out = text(result.stdout)
    assert result.returncode == 0, text(result.stderr)
    assert out.startswith("configuration OK")
    assert "deadline 20s" in out
    assert "model 'kokoro': 1 deployment(s)" in out
    assert "model 'tts-1'" in out
    assert "primary" in out
    assert "api_key: set" in out
    assert "api_key: none" in out
    assert SECRET not in out
    assert "sk-" not in out


def test_config_import_litellm_prints_settings_and_reports_the_rest(tmp_path: Path) -> None:
    """The translation goes to stdout (a TOML settings file), what was not translated to stderr,
    and a key written in the LiteLLM file appears nowhere."""
    (tmp_path / "litellm.yaml").write_text(
        "model_list:\n"
        "  - model_name: kokoro\n"
        "    litellm_params:\n"
        "      model: openai/kokoro\n"
        "      api_base: http://10.0.0.5:8880/v1\n"
        "      api_key: os.environ/GPU_KEY\n"
        "  - model_name: backup\n"
        "    litellm_params:\n"
        f"      {{model: openai/kokoro, api_base: 'http://10.0.0.6:8880/v1', api_key: {SECRET}}}\n"
        "router_settings:\n"
        "  fallbacks: [{kokoro: [backup]}]\n"
        "  routing_strategy: usage-based-routing\n"
    )
    started = [
        start_cli("config", "import-litellm", "litellm.yaml", cwd=tmp_path),
        start_cli("config", "import-litellm", "litellm.yaml", "--format", "json", cwd=tmp_path),
        start_cli("config", "import-litellm", "nope.yaml", cwd=tmp_path),
    ]
    toml, as_json, missing = (finish(command) for command in started)
    assert toml.returncode == 0, text(toml.stderr)
    settings = tomllib.loads(text(toml.stdout))
    kokoro = settings["models"]["kokoro"]["deployments"]
    assert [d["name"] for d in kokoro] == ["kokoro", "backup"]
    assert kokoro[0]["api_key"] == "os.environ/GPU_KEY"
    assert "routing_strategy" in text(toml.stderr)
    assert "RESILIENT_TTS_KEY_BACKUP" in text(toml.stderr)
    assert (
        json.loads(as_json.stdout)["kokoro"]["deployments"][1]["api_key"]
        == "os.environ/RESILIENT_TTS_KEY_BACKUP"
    )
    for result in (toml, as_json):
        assert SECRET not in text(result.stdout) + text(result.stderr)
    assert missing.returncode == 2
    assert_one_line_error(missing, "cannot read the LiteLLM config")


def test_demo_runs_unattended_to_the_end_and_writes_audio(tmp_path: Path) -> None:
    """The README's first command: no configuration, local deployments, a broken and healed
    primary, every request served, mp3 files written, well within 30 seconds."""
    started = time.monotonic()
    result = run_cli("demo", "--quick", "--requests", "12", "--out", "clips", cwd=tmp_path)
    elapsed = time.monotonic() - started
    out = text(result.stdout)
    assert result.returncode == 0, out + text(result.stderr)
    assert elapsed < 30
    for banner in ("== gpu-a crashes", "== gpu-b hangs too", "== gpu-a and gpu-b are back"):
        assert banner in out
    assert " 0 failed" in out
    clips = sorted((tmp_path / "clips").iterdir())
    assert len(clips) >= 12
    assert all(is_mp3(clip.read_bytes()) for clip in clips)
    served = {clip.stem.split("-", 1)[1] for clip in clips}
    assert served == {"gpu-a", "gpu-b", "cloud"}
    assert clips[-1].stem.endswith("gpu-a")  # the primary is back at the end


def test_console_script_is_installed() -> None:
    """`resilient-tts` is on PATH after installing the package, and answers --help."""
    script = shutil.which("resilient-tts")
    if script is None:
        pytest.skip("the package is not installed with its console script here")
    result = subprocess.run([script, "--help"], capture_output=True, timeout=TIMEOUT, check=False)
    assert result.returncode == 0
    assert b"demo" in result.stdout
    assert b"config" in result.stdout


# -- in-process: the usage errors -------------------------------------------------------------


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """Runs `main()` here, with a clean environment and without touching logging."""
    monkeypatch.setattr(_cli, "_configure_logging", lambda verbose, quiet: None)
    for name in [n for n in os.environ if n.startswith("RESILIENT_TTS_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return _cli.main


@pytest.mark.parametrize(
    ("argv", "env", "contains"),
    [
        (["say", "Hi.", "-o", "x.mp3"], {}, "no models configured"),
        (["say", "Hi.", "-o", "missing/x.mp3"], {"kokoro": 1, "tts-1": 1}, "no such directory"),
        (["say", "Hi.", "-o", "x.mp3"], {"kokoro": 1, "tts-1": 1}, "choose one with --model"),
        (["say", "Hi.", "-o", "x.mp3", "--model", "nope"], {"kokoro": 1}, "not a configured"),
        (["say", "Hi.", "-o", "x.mp3", "--speed", "9"], {"kokoro": 1}, "speed"),
        (["config", "check"], {}, "no models configured"),
        (["status"], {}, "no models configured"),
        (["status", "--timeout", "0"], {"kokoro": 1}, "--timeout must be > 0"),
        (["demo", "--requests", "2"], {}, "--requests must be at least 5"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    cli: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    env: dict[str, int],
    contains: str,
) -> None:
    """Mistakes on the command line or in the configuration: exit 2 and a one-line message."""
    if env:
        deployment = {"name": "local", "base_url": "http://127.0.0.1:9/v1", "model": "k"}
        pools = {name: {"deployments": [deployment]} for name in env}
        monkeypatch.setenv("RESILIENT_TTS_MODELS", json.dumps(pools))
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("resilient-tts: error: ")
    assert contains.lower() in err[0].lower()


def test_argparse_usage_errors_exit_2(cli: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """No command, or a missing required option, is argparse's exit 2 with the usage."""
    for argv in ([], ["say", "Hi."], ["config"]):
        with pytest.raises(SystemExit) as exited:
            cli(argv)
        assert exited.value.code == 2
    assert "usage: resilient-tts" in capsys.readouterr().err
