"""Migrating from LiteLLM: a proxy config becomes pools, and SPEC §1's config works as meant."""

from __future__ import annotations

import logging
import sys
import tomllib
from pathlib import Path
from textwrap import dedent

import pytest

from resilient_tts import ConfigurationError, SpeechClient, import_litellm_config
from resilient_tts.testing import FakeSpeechServer, Fault
from tests.helpers import speak

SECRET = "sk-literal-in-the-file-9876"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "litellm_config.yaml"
    path.write_text(dedent(text))
    return path


def seed_case(tmp_path: Path, llama_swap: str, server1: str, server2: str) -> Path:
    """SPEC §1: a placeholder `kokoro` on llama-swap, falling back to server1 then server2."""
    return write(
        tmp_path,
        f"""
        model_list:
          - model_name: kokoro
            litellm_params:
              model: openai/kokoro
              api_base: {llama_swap}
              api_key: os.environ/LLAMA_SWAP_KEY
          - model_name: server1/kokoro
            litellm_params:
              model: openai/kokoro
              api_base: {server1}
          - model_name: server2/kokoro
            litellm_params:
              model: openai/kokoro
              api_base: {server2}
        router_settings:
          fallbacks: [{{"kokoro": ["server1/kokoro", "server2/kokoro"]}}]
          num_retries: 3
        """,
    )


@pytest.mark.anyio
async def test_seed_case_runs_as_its_author_meant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The llama-swap 400 "could not find real modelID" sends `kokoro` to server1, and to
    server2 when server1 refuses: the fallbacks LiteLLM never ran."""
    monkeypatch.setenv("LLAMA_SWAP_KEY", "sk-llama-swap")
    async with (
        FakeSpeechServer(name="llama-swap", fault=Fault.model_not_found("kokoro")) as swap,
        FakeSpeechServer(name="server1") as server1,
        FakeSpeechServer(name="server2") as server2,
    ):
        path = seed_case(tmp_path, swap.base_url, server1.base_url, server2.base_url)
        async with SpeechClient.from_litellm_config(path, first_byte_timeout=2) as client:
            first = await speak(client)
            server1.set_fault(Fault.refuse())
            second = await speak(client)
    assert first.deployment == "server1/kokoro"
    assert [a.kind.value if a.kind else a.outcome.value for a in first.attempts] == [
        "deployment_broken",
        "success",
    ]
    assert second.deployment == "server2/kokoro"
    assert swap.requests[0].authorization == "Bearer sk-llama-swap"  # os.environ/ resolved
    assert swap.hits == 1  # forced open after its 400, not asked again


def test_seed_case_pools_and_report(tmp_path: Path) -> None:
    """One pool per model name; `kokoro` holds its own deployment then its fallbacks, in order;
    num_retries is reported, not dropped."""
    path = seed_case(
        tmp_path, "http://10.0.0.1:8080/v1", "http://10.0.0.2:8880/v1", "http://10.0.0.3:8880/v1"
    )
    imported = import_litellm_config(path)
    assert dict(imported.pools) == {
        "kokoro": ("kokoro", "server1/kokoro", "server2/kokoro"),
        "server1/kokoro": ("server1/kokoro",),
        "server2/kokoro": ("server2/kokoro",),
    }
    assert any(w.startswith("num_retries: 3 not translated") for w in imported.warnings)
    models = imported.models()
    assert models["kokoro"]["deployments"][0] == {
        "name": "kokoro",
        "base_url": "http://10.0.0.1:8080/v1",
        "model": "kokoro",
        "api_key": "os.environ/LLAMA_SWAP_KEY",
    }


def test_order_names_placeholders_default_fallbacks_and_skipped_entries(tmp_path: Path) -> None:
    """`order` sorts a model's deployments; shared names get an index; a fallback-only
    placeholder becomes a pool; other providers and chat models are skipped with a warning."""
    path = write(
        tmp_path,
        """
        model_list:
          - model_name: tts
            litellm_params: {model: openai/kokoro, api_base: "http://b:8880/v1", order: 2}
          - model_name: tts
            litellm_params: {model: openai/kokoro, api_base: "http://a:8880/v1", order: 1, rpm: 10}
          - model_name: cloud
            litellm_params: {model: tts-1, timeout: 20}
          - model_name: eleven
            litellm_params: {model: elevenlabs/eleven_v3}
          - model_name: chat
            litellm_params: {model: openai/gpt-4o}
            model_info: {mode: chat}
        router_settings:
          fallbacks: [{"voice": ["tts", "cloud"]}]
          default_fallbacks: ["cloud"]
          timeout: 30
          cooldown_time: 60
          routing_strategy: latency-based-routing
        litellm_settings:
          cache: true
        general_settings:
          master_key: sk-master-1234
        """,
    )
    imported = import_litellm_config(path)
    assert dict(imported.pools) == {
        "tts": ("tts-1", "tts-2", "cloud"),
        "cloud": ("cloud",),
        "voice": ("tts-1", "tts-2", "cloud"),
    }
    tts = imported.models()["tts"]["deployments"]
    assert [d["base_url"] for d in tts[:2]] == ["http://a:8880/v1", "http://b:8880/v1"]
    cloud = imported.models()["cloud"]["deployments"][0]
    assert cloud == {
        "name": "cloud",
        "base_url": "https://api.openai.com/v1",
        "model": "tts-1",
        "api_key": "os.environ/OPENAI_API_KEY",
        "attempt_timeout": 20.0,
    }
    assert dict(imported.settings) == {"deadline": 30.0, "breaker_open_seconds": 60.0}
    report = "\n".join(imported.warnings)
    for expected in (
        "provider 'elevenlabs'",
        "not speech models were skipped: chat (chat)",
        "litellm_params.rpm",
        "router_settings.routing_strategy",
        "litellm_settings.cache",
        "general_settings",
    ):
        assert expected in report
    assert "sk-master-1234" not in report


def test_a_key_written_in_the_file_is_used_but_never_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A literal key works for from_litellm_config, and every printed form refers to a variable."""
    path = write(
        tmp_path,
        f"""
        model_list:
          - model_name: kokoro
            litellm_params:
              model: openai/kokoro
              api_base: http://a:8880/v1
              api_key: {SECRET}
        """,
    )
    imported = import_litellm_config(path)
    printed = (
        imported.to_toml() + imported.to_json() + imported.to_env() + "\n".join(imported.warnings)
    )
    assert SECRET not in printed
    assert "os.environ/RESILIENT_TTS_KEY_KOKORO" in imported.to_json()
    assert SECRET not in repr(imported)
    deployment = imported.client_arguments()["models"]["kokoro"].deployments[0]
    assert deployment.api_key.get_secret_value() == SECRET


def test_toml_and_env_outputs_are_valid_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The TOML is a settings file SpeechClient reads; names with a slash are quoted keys."""
    path = seed_case(
        tmp_path, "http://10.0.0.1:8080/v1", "http://10.0.0.2:8880/v1", "http://10.0.0.3:8880/v1"
    )
    imported = import_litellm_config(path)
    settings_file = tmp_path / "tts.toml"
    settings_file.write_text(imported.to_toml())
    parsed = tomllib.loads(imported.to_toml())
    assert list(parsed["models"]) == ["kokoro", "server1/kokoro", "server2/kokoro"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLAMA_SWAP_KEY", "sk-from-the-environment")  # the reference is kept
    client = SpeechClient(config_file=settings_file)
    assert [d.name for d in client.settings.models["kokoro"].deployments] == [
        "kokoro",
        "server1/kokoro",
        "server2/kokoro",
    ]
    env = imported.to_env()
    assert env.startswith("RESILIENT_TTS_MODELS='{")
    assert env.count("\n") == 1


def test_api_base_from_the_environment_is_read_at_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`api_base: os.environ/VAR` is read at import; if it is not set, the entry is skipped."""
    monkeypatch.setenv("GPU_A_BASE", "http://10.0.0.5:8880/v1")
    monkeypatch.delenv("GPU_B_BASE", raising=False)
    path = write(
        tmp_path,
        """
        model_list:
          - model_name: kokoro
            litellm_params: {model: openai/kokoro, api_base: os.environ/GPU_A_BASE}
          - model_name: kokoro
            litellm_params: {model: openai/kokoro, api_base: os.environ/GPU_B_BASE}
        """,
    )
    imported = import_litellm_config(path)
    assert imported.models()["kokoro"]["deployments"][0]["base_url"] == "http://10.0.0.5:8880/v1"
    assert len(imported.pools["kokoro"]) == 1
    assert any("os.environ/GPU_B_BASE, which is not set" in w for w in imported.warnings)


def test_missing_environment_variable_is_named_not_guessed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An os.environ/VAR key whose variable is not set fails at load time, naming it."""
    monkeypatch.delenv("LLAMA_SWAP_KEY", raising=False)
    path = seed_case(
        tmp_path, "http://10.0.0.1:8080/v1", "http://10.0.0.2:8880/v1", "http://10.0.0.3:8880/v1"
    )
    with pytest.raises(ConfigurationError, match="LLAMA_SWAP_KEY, but LLAMA_SWAP_KEY is not set"):
        SpeechClient.from_litellm_config(path)


def test_untranslated_settings_are_logged_as_warnings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """from_litellm_config logs what it could not translate at WARNING; num_retries: 0 disables
    retries."""
    path = write(
        tmp_path,
        """
        model_list:
          - model_name: kokoro
            litellm_params: {model: openai/kokoro, api_base: "http://a:8880/v1", max_retries: 2}
        router_settings:
          num_retries: 0
          allowed_fails: 3
        """,
    )
    with caplog.at_level(logging.WARNING, logger="resilient_tts"):
        client = SpeechClient.from_litellm_config(path, deadline=12)
    messages = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("max_retries" in m for m in messages)
    assert any("allowed_fails" in m for m in messages)
    assert client.settings.deadline == 12
    assert client._engine._retry_policy.budget_capacity == 0.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("just: text\n", "not a LiteLLM proxy config: no model_list"),
        ("model_list: [\n  api_key: sk-in-a-broken-line\n", "not valid YAML at line"),
        (
            "model_list:\n  - model_name: x\n    litellm_params: {model: azure/tts}\n",
            "no speech deployment",
        ),
        (
            "model_list:\n  - model_name: x\n    litellm_params: {model: openai/k, api_base: 'ftp://x'}\n",
            r"model_list\[0\] \(x\)\.litellm_params",
        ),
    ],
    ids=["not-litellm", "bad-yaml", "nothing-usable", "bad-url"],
)
def test_bad_files_are_configuration_errors_that_echo_no_secret(
    tmp_path: Path, text: str, message: str
) -> None:
    """Unreadable or unusable configs say why in one message, and never quote the file's lines."""
    with pytest.raises(ConfigurationError, match=message) as caught:
        import_litellm_config(write(tmp_path, text))
    assert "sk-in-a-broken-line" not in str(caught.value)


def test_missing_file_and_missing_pyyaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing file and a missing PyYAML are ConfigurationErrors that say what to do."""
    with pytest.raises(ConfigurationError, match="cannot read the LiteLLM config"):
        import_litellm_config(tmp_path / "nope.yaml")
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'resilient-tts\[yaml\]'"):
        import_litellm_config(tmp_path / "nope.yaml")
