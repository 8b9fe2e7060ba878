"""Property-based tests: any bad request or configuration ends in a typed, clear error.

Request parameters are drawn from good values and from arbitrary Python objects; an oracle,
written apart from `_request.py`, says which calls are good. Good calls must return audio,
bad ones must raise `InvalidRequestError` before any network call. Configuration of any
shape, from the environment or from Python, either builds a client or raises
`ConfigurationError` naming where the problem is, and never shows a secret.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from resilient_tts import (
    ConfigurationError,
    Deployment,
    InvalidRequestError,
    Pool,
    ResilientTTSError,
    SpeechClient,
)
from resilient_tts.testing import FakeSpeechServer
from tests.helpers import deployments

pytestmark = pytest.mark.anyio

FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
SECRET = "sk-fuzz-SECRET-0123456789"
# No example database: a test run leaves nothing behind in the working tree.
CONFIG_EXAMPLES = settings(max_examples=150, deadline=None, database=None)
EXAMPLES = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Odd:
    """An object no validator expects."""

    def __repr__(self) -> str:
        return "Odd()"


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.binary(max_size=8),
    st.complex_numbers(max_magnitude=10),
    st.decimals(allow_nan=True),
    st.builds(Odd),
)
anything = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), inner, max_size=3),
        st.frozensets(st.integers(), max_size=3),
    ),
    max_leaves=6,
)
json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=10),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
speakable = st.text(min_size=1, max_size=30).filter(lambda text: bool(text.strip()))
token = st.text(
    alphabet="!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    min_size=1,
    max_size=12,
)


RESERVED_HEADERS = {"authorization", "host", "content-length", "transfer-encoding", "connection"}
CORE_PARAMETERS = {
    "model",
    "voice",
    "input",
    "response_format",
    "speed",
    "instructions",
    "stream_format",
}
good_parameters = {
    "model": st.just("kokoro"),
    "voice": speakable,
    "input": speakable,
    "response_format": st.sampled_from(FORMATS),
    "speed": st.one_of(st.none(), st.floats(0.25, 4.0), st.integers(1, 4)),
    "instructions": st.one_of(st.none(), st.text(max_size=20)),
    "stream_format": st.sampled_from([None, "audio", "sse"]),
    "extra_headers": st.one_of(
        st.none(),
        st.dictionaries(
            token.filter(lambda name: name.lower() not in RESERVED_HEADERS),
            st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126)).map(str.strip),
            max_size=2,
        ),
    ),
    "extra_body": st.one_of(
        st.none(),
        st.dictionaries(
            st.text(min_size=1, max_size=8).filter(lambda key: key not in CORE_PARAMETERS),
            json_values,
            max_size=2,
        ),
    ),
    "timeout": st.one_of(st.none(), st.floats(5, 1e6), st.just(httpx2.Timeout(30.0))),
}
good_kwargs = st.fixed_dictionaries(good_parameters)
# A good call with some of its parameters replaced by anything at all.
mixed_kwargs = st.builds(
    lambda good, changed: {**good, **changed},
    good_kwargs,
    st.fixed_dictionaries({}, optional=dict.fromkeys(good_parameters, anything)),
)

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def is_text(value: object, *, optional: bool = False, blank_ok: bool = False) -> bool:
    if value is None:
        return optional
    if type(value) is not str:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return blank_ok or bool(value.strip())


def is_json(value: object) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def good_request(kw: Mapping[str, Any]) -> bool:
    """The oracle: what the SDK promises to accept (SPEC §2, §4; the OpenAI API's ranges)."""
    speed, timeout, headers, body = (
        kw["speed"],
        kw["timeout"],
        kw["extra_headers"],
        kw["extra_body"],
    )
    return (
        kw["model"] == "kokoro"
        and type(kw["model"]) is str
        and is_text(kw["voice"])
        and is_text(kw["input"])
        and kw["response_format"] in FORMATS
        and type(kw["response_format"]) is str
        and (speed is None or (type(speed) in (int, float) and 0.25 <= speed <= 4.0))
        and is_text(kw["instructions"], optional=True, blank_ok=True)
        and kw["stream_format"] in (None, "audio", "sse")
        and (kw["stream_format"] is None or type(kw["stream_format"]) is str)
        and (
            headers is None
            or (
                isinstance(headers, dict)
                and all(
                    type(k) is str
                    and type(v) is str
                    and _TOKEN.fullmatch(k) is not None
                    and k.lower()
                    not in {
                        "authorization",
                        "host",
                        "content-length",
                        "transfer-encoding",
                        "connection",
                    }
                    and re.fullmatch(r"(?:[!-~](?:[\t -~]*[!-~])?)?", v) is not None
                    for k, v in headers.items()
                )
            )
        )
        and (
            body is None
            or (
                isinstance(body, dict)
                and all(type(k) is str and k not in CORE_PARAMETERS for k in body)
                and is_json(body)
            )
        )
        and (
            timeout is None
            or isinstance(timeout, httpx2.Timeout)
            or (type(timeout) in (int, float) and timeout >= 5)
        )
    )


@EXAMPLES
@given(kw=good_kwargs)
async def test_good_request_parameters_always_give_audio(kw: dict[str, Any]) -> None:
    """Any combination of good parameters is served (the oracle agrees they are good)."""
    assert good_request(kw)
    async with (
        FakeSpeechServer(name="a") as server,
        SpeechClient(models={"kokoro": deployments([server])}, transport="httpx") as client,
    ):
        speech = await client.audio.speech.create(**kw)
    assert speech.content
    assert speech.deployment == "a"


@EXAMPLES
@given(kw=mixed_kwargs)
async def test_any_request_parameters_give_audio_or_invalid_request_error(
    kw: dict[str, Any],
) -> None:
    """Good parameters give audio; anything else is an InvalidRequestError before any server."""
    async with (
        FakeSpeechServer(name="a") as server,
        SpeechClient(models={"kokoro": deployments([server])}, transport="httpx") as client,
    ):
        if good_request(kw):
            speech = await client.audio.speech.create(**kw)
            assert speech.content
        else:
            with pytest.raises(InvalidRequestError) as caught:
                await client.audio.speech.create(**kw)
            assert str(caught.value)
            assert server.hits == 0


# -- configuration ---------------------------------------------------------------------------

FIELDS = {
    "name": st.text(max_size=10),
    "base_url": st.one_of(
        st.sampled_from(
            ["http://127.0.0.1:9/v1", "https://h/v1", "ftp://h", "http://:1", "http://u:pw@h/"]
        ),
        st.text(max_size=15),
    ),
    "model": st.text(max_size=10),
    "api_key": st.just(SECRET),
    "voices": json_values,
    "formats": st.one_of(st.lists(st.sampled_from([*FORMATS, "ogg", ""]), max_size=4), json_values),
    "sample_rate": st.one_of(st.integers(-10, 300_000), json_values),
    "max_input_chars": st.one_of(st.integers(-5, 10_000), json_values),
    "first_byte_timeout": st.one_of(st.floats(), json_values),
    "accepts_speed": json_values,
    "unknown_field": json_values,
}
GOOD_DEPLOYMENT = {
    "name": "a",
    "base_url": "http://127.0.0.1:9/v1",
    "model": "kokoro",
    "api_key": SECRET,
}
# A good deployment with some fields replaced by anything: reaches every field's validation.
deployment_dicts = st.builds(
    lambda changes: {**GOOD_DEPLOYMENT, **changes}, st.fixed_dictionaries({}, optional=FIELDS)
)
models_shapes = st.one_of(
    json_values,
    st.dictionaries(
        st.text(max_size=6),
        st.one_of(
            json_values,
            st.fixed_dictionaries({"deployments": st.lists(deployment_dicts, max_size=3)}),
        ),
        max_size=2,
    ),
)
KNOBS = [
    "DEADLINE",
    "ATTEMPT_TIMEOUT",
    "FIRST_BYTE_TIMEOUT",
    "STALL_TIMEOUT",
    "BREAKER_OPEN_SECONDS",
    "SAMPLE_RATE",
    "TRANSPORT",
    "REDIS_URL",
    "REDIS_SYNC_INTERVAL",
    "REDIS_TIMEOUT",
    "REDIS_PREFIX",
]
# What an environment can hold: no NUL, no lone surrogate.
env_text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
knob_values = st.one_of(
    st.sampled_from(["", "0", "-1", "nan", "inf", "1e309", "3", "0.5", "true", "httpx", "x y"]),
    env_text,
)
# Only the Redis URL is a secret; other knobs may echo a wrong value to help the reader.
secret_urls = st.one_of(
    st.sampled_from(
        [f"redis://:{SECRET}@h:1/0", f"http://:{SECRET}@h/", f"redis://:{SECRET}@h:port/0"]
    ),
    env_text,
)
knob_settings = st.dictionaries(
    st.sampled_from(KNOBS), knob_values, min_size=1, max_size=3
).flatmap(
    lambda values: st.fixed_dictionaries(
        {
            name: secret_urls if name == "REDIS_URL" else st.just(value)
            for name, value in values.items()
        }
    )
)


def check_configuration_error(error: ConfigurationError, naming: list[str] | None = None) -> None:
    """A message that says where the problem is, and never shows the secret."""
    message = str(error)
    assert message
    assert SECRET not in message
    if naming is not None:
        assert any(name in message for name in naming), message
    assert (
        "RESILIENT_TTS_" in message
        or "SpeechClient(" in message
        or "Deployment" in message
        or "Pool" in message
    )


@CONFIG_EXAMPLES
@given(models=models_shapes, raw=st.one_of(st.none(), env_text))
def test_any_models_json_builds_or_raises_configuration_error(models: Any, raw: str | None) -> None:
    """RESILIENT_TTS_MODELS of any shape, even malformed JSON: a client or a ConfigurationError."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RESILIENT_TTS_MODELS", json.dumps(models) if raw is None else raw)
        try:
            client = SpeechClient()
        except ConfigurationError as error:
            check_configuration_error(error, naming=["RESILIENT_TTS_MODELS"])
        else:
            assert SECRET not in repr(client) + repr(client.settings)


@CONFIG_EXAMPLES
@given(values=knob_settings)
def test_any_knob_value_builds_or_raises_configuration_error(values: dict[str, str]) -> None:
    """Timeouts, sample rate, transport, Redis knobs from the environment: valid or clear error."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in values.items():
            patch.setenv(f"RESILIENT_TTS_{name}", value)
        try:
            SpeechClient(models={})
        except ConfigurationError as error:
            check_configuration_error(error, naming=[f"RESILIENT_TTS_{name}" for name in values])


@CONFIG_EXAMPLES
@given(fields=deployment_dicts)
def test_any_deployment_fields_in_python_build_or_raise_configuration_error(
    fields: dict[str, Any],
) -> None:
    """Deployment(**fields) and SpeechClient(models=...) with fields of any type."""
    try:
        deployment = Deployment(**fields)
    except ConfigurationError as error:
        check_configuration_error(error)
    else:
        assert SECRET not in repr(deployment) + str(deployment)
    try:
        SpeechClient(models={"kokoro": [fields]})
    except ConfigurationError as error:
        check_configuration_error(error)


@CONFIG_EXAMPLES
@given(models=anything)
def test_any_python_object_as_models_raises_only_configuration_error(models: Any) -> None:
    """Whatever is passed as models=, the only error is ConfigurationError."""
    try:
        SpeechClient(models=models)
    except ConfigurationError as error:
        check_configuration_error(error)
    except ResilientTTSError as error:  # pragma: no cover - a typed error, but the wrong one
        pytest.fail(f"{type(error).__name__}: {error}")


def test_a_good_configuration_never_raises() -> None:
    """The documented example configuration builds (SPEC §3)."""
    models = {
        "kokoro": Pool(
            deployments=[
                Deployment(
                    name="gpu-a",
                    base_url="http://10.0.0.5:8880/v1",
                    api_key=SecretStr(SECRET),
                    model="kokoro",
                    voices={"alloy": "af_bella"},
                    formats=("mp3", "wav", "pcm"),
                ),
                Deployment(name="openai", base_url="https://api.openai.com/v1", model="tts-1"),
            ]
        )
    }
    client = SpeechClient(models=models, deadline=math.pi, redis_url="redis://127.0.0.1:6379/0")
    assert SECRET not in repr(client)
