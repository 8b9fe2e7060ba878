"""Configuration: environment, .env, settings files and Python objects; clear errors, no secrets."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from resilient_tts import ConfigurationError, Deployment, Pool, SpeechClient

SECRET = "sk-do-not-leak-0123456789"


def models_json(*deployments: Mapping[str, object]) -> str:
    return json.dumps({"kokoro": {"deployments": list(deployments)}})


GOOD = {
    "name": "gpu-a",
    "base_url": "http://127.0.0.1:8880/v1",
    "model": "kokoro",
    "api_key": SECRET,
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each test starts from an empty RESILIENT_TTS_* environment in an empty directory."""
    import os

    for name in list(os.environ):
        if name.startswith("RESILIENT_TTS_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_models_from_environment_with_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """RESILIENT_TTS_MODELS builds pools; unset knobs take the documented defaults."""
    monkeypatch.setenv(
        "RESILIENT_TTS_MODELS",
        models_json(
            GOOD | {"voices": {"alloy": "af_bella"}, "formats": ["mp3", "wav"]},
            GOOD | {"name": "gpu-b"},
        ),
    )
    settings = SpeechClient().settings
    pool = settings.models["kokoro"]
    assert [d.name for d in pool.deployments] == ["gpu-a", "gpu-b"]
    first = pool.deployments[0]
    assert first.voices == {"alloy": "af_bella"}
    assert first.formats == ("mp3", "wav")
    assert pool.deployments[1].formats == ("mp3", "opus", "aac", "flac", "wav", "pcm")
    assert (first.sample_rate, first.max_input_chars) == (24000, 4096)
    assert (settings.deadline, settings.attempt_timeout, settings.first_byte_timeout) == (
        60,
        30,
        10,
    )
    assert (settings.stall_timeout, settings.breaker_open_seconds, settings.sample_rate) == (
        5,
        5,
        24000,
    )


def test_knobs_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each global knob has its RESILIENT_TTS_* variable."""
    monkeypatch.setenv("RESILIENT_TTS_DEADLINE", "12")
    monkeypatch.setenv("RESILIENT_TTS_ATTEMPT_TIMEOUT", "6")
    monkeypatch.setenv("RESILIENT_TTS_FIRST_BYTE_TIMEOUT", "2.5")
    monkeypatch.setenv("RESILIENT_TTS_STALL_TIMEOUT", "1")
    monkeypatch.setenv("RESILIENT_TTS_BREAKER_OPEN_SECONDS", "9")
    monkeypatch.setenv("RESILIENT_TTS_SAMPLE_RATE", "16000")
    s = SpeechClient().settings
    assert (s.deadline, s.attempt_timeout, s.first_byte_timeout, s.stall_timeout) == (12, 6, 2.5, 1)
    assert (s.breaker_open_seconds, s.sample_rate) == (9, 16000)


def test_toml_file_and_environment_beats_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """RESILIENT_TTS_CONFIG_FILE names a TOML file with the same schema; the environment wins."""
    path = tmp_path / "tts.toml"
    path.write_text(
        'deadline = 20\nfirst_byte_timeout = 4\n\n[[models.kokoro.deployments]]\nname = "file-a"\n'
        'base_url = "http://127.0.0.1:1/v1"\nmodel = "kokoro"\n'
    )
    monkeypatch.setenv("RESILIENT_TTS_CONFIG_FILE", str(path))
    monkeypatch.setenv("RESILIENT_TTS_DEADLINE", "30")
    s = SpeechClient().settings
    assert s.deadline == 30
    assert s.first_byte_timeout == 4
    assert s.models["kokoro"].deployments[0].name == "file-a"


def test_yaml_file_given_as_argument(tmp_path: Path) -> None:
    """A YAML settings file works too, named by config_file=."""
    path = tmp_path / "tts.yaml"
    path.write_text(
        "stall_timeout: 2\nmodels:\n  kokoro:\n    deployments:\n"
        "      - {name: y, base_url: 'http://127.0.0.1:1/v1', model: kokoro}\n"
    )
    s = SpeechClient(config_file=path).settings
    assert s.stall_timeout == 2
    assert s.models["kokoro"].deployments[0].name == "y"


def test_dotenv_file(tmp_path: Path) -> None:
    """A .env in the working directory is read."""
    (tmp_path / ".env").write_text(
        f"RESILIENT_TTS_MODELS='{models_json(GOOD)}'\nRESILIENT_TTS_DEADLINE=7\n"
    )
    s = SpeechClient().settings
    assert s.deadline == 7
    assert s.models["kokoro"].deployments[0].name == "gpu-a"


def test_python_objects() -> None:
    """Pools can be given as Python objects: a Pool, a list of Deployments, or plain mappings."""
    a = Deployment(name="a", base_url="http://127.0.0.1:1/v1", model="kokoro")
    client = SpeechClient(
        models={
            "kokoro": [a],
            "piper": Pool(deployments=(a,), first_byte_timeout=1),
            "x": {"deployments": [GOOD]},
        },
        first_byte_timeout=3,
    )
    assert client.settings.models["piper"].first_byte_timeout == 1
    assert client.settings.first_byte_timeout == 3
    assert client.settings.models["x"].deployments[0].name == "gpu-a"


@pytest.mark.parametrize(
    ("models", "expected"),
    [
        ({"kokoro": {"deployments": []}}, "kokoro.deployments"),
        ({"kokoro": {"deployments": [GOOD, GOOD]}}, "appears twice"),
        (
            {"kokoro": {"deployments": [GOOD | {"base_url": "ftp://x"}]}},
            "kokoro.deployments[0].base_url",
        ),
        ({"kokoro": {"deployments": [GOOD | {"formats": ["ogg"]}]}}, "formats[0]"),
        ({"kokoro": {"deployments": [GOOD | {"first_byte_timeout": -1}]}}, "first_byte_timeout"),
        ({"kokoro": {"deployments": [GOOD | {"apikey": SECRET}]}}, "unknown field"),
        (
            {"kokoro": {"deployments": [GOOD | {"base_url": f"http://user:{SECRET}@x/v1"}]}},
            "credentials",
        ),
    ],
)
def test_bad_models_name_the_variable_and_field_and_never_the_key(
    monkeypatch: pytest.MonkeyPatch, models: object, expected: str
) -> None:
    """Bad configuration fails at construction, naming RESILIENT_TTS_MODELS and the field."""
    monkeypatch.setenv("RESILIENT_TTS_MODELS", json.dumps(models))
    with pytest.raises(ConfigurationError) as caught:
        SpeechClient()
    message = str(caught.value)
    assert "RESILIENT_TTS_MODELS" in message
    assert expected in message
    assert SECRET not in message
    assert isinstance(caught.value, ValueError)


def test_malformed_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """Malformed JSON says so and names the variable."""
    monkeypatch.setenv("RESILIENT_TTS_MODELS", '{"kokoro": ')
    with pytest.raises(ConfigurationError, match=r"RESILIENT_TTS_MODELS: not valid JSON"):
        SpeechClient()


def test_negative_timeout_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESILIENT_TTS_FIRST_BYTE_TIMEOUT", "-2")
    with pytest.raises(ConfigurationError, match="RESILIENT_TTS_FIRST_BYTE_TIMEOUT"):
        SpeechClient()


def test_missing_settings_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESILIENT_TTS_CONFIG_FILE", "/nonexistent/tts.toml")
    with pytest.raises(ConfigurationError, match=r"RESILIENT_TTS_CONFIG_FILE.*no such file"):
        SpeechClient()


def test_deployment_built_in_python_raises_configuration_error() -> None:
    """A bad Deployment built in Python is a ConfigurationError too."""
    with pytest.raises(ConfigurationError, match="base_url"):
        Deployment(name="a", base_url="not a url", model="m", api_key=SECRET)


def test_secret_never_in_reprs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither the deployment's repr, the settings' repr nor the client's repr shows the key."""
    monkeypatch.setenv("RESILIENT_TTS_MODELS", models_json(GOOD))
    client = SpeechClient()
    deployment = client.settings.models["kokoro"].deployments[0]
    for text in (
        repr(deployment),
        str(deployment),
        repr(client.settings),
        repr(client),
        str(client.settings),
    ):
        assert SECRET not in text


def test_breaker_policy_open_seconds_applies_unless_a_setting_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """BreakerPolicy(open_seconds=...) is used unless RESILIENT_TTS_BREAKER_OPEN_SECONDS is set."""
    from resilient_tts import BreakerPolicy

    async def open_seconds() -> float:
        async with SpeechClient(
            models={"kokoro": [GOOD]}, breaker=BreakerPolicy(open_seconds=2, max_open_seconds=60)
        ) as client:
            return client._live_pools()["kokoro"].deployments[0].breaker.policy.open_seconds

    import anyio

    assert anyio.run(open_seconds) == 2
    monkeypatch.setenv("RESILIENT_TTS_BREAKER_OPEN_SECONDS", "7")
    assert anyio.run(open_seconds) == 7


def test_api_key_from_an_environment_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """LiteLLM's os.environ/VAR reference reads the key from the environment; unset is an error."""
    monkeypatch.setenv("MY_TTS_KEY", SECRET)
    deployment = Deployment(**(GOOD | {"api_key": "os.environ/MY_TTS_KEY"}))
    assert deployment.api_key is not None
    assert deployment.api_key.get_secret_value() == SECRET
    with pytest.raises(ConfigurationError, match="MISSING_TTS_KEY, which is not set"):
        Deployment(**(GOOD | {"api_key": "os.environ/MISSING_TTS_KEY"}))
