"""Reads configuration from the environment, `.env` and a settings file, at the edge.

Precedence, highest first: arguments given to `SpeechClient(...)`, ``RESILIENT_TTS_*``
environment variables, a `.env` file in the working directory, then the settings file named by
``RESILIENT_TTS_CONFIG_FILE`` (or ``config_file=``), TOML or YAML, with the same schema.
Every problem becomes a `ConfigurationError` that names the variable and the field, never the
value of a secret.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

from .._exceptions import ConfigurationError
from ._values import Pool, Seconds, describe_validation_error, validating

__all__ = ["ENV_PREFIX", "Settings", "load_settings"]

ENV_PREFIX = "RESILIENT_TTS_"


class Settings(BaseSettings):
    """Everything `SpeechClient` can be configured with. See docs/configuration.md."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="forbid",
        frozen=True,
    )

    models: dict[str, Pool] = Field(default_factory=dict)
    deadline: Seconds = 60.0
    attempt_timeout: Seconds = 30.0
    first_byte_timeout: Seconds = 10.0
    stall_timeout: Seconds = 5.0
    breaker_open_seconds: Seconds = 5.0
    sample_rate: int = Field(default=24000, ge=8000, le=192000)
    # "auto": aiohttp under asyncio when it is installed (faster), httpx2 otherwise (trio).
    transport: Literal["auto", "httpx", "aiohttp"] = "auto"
    config_file: Path | None = None
    # Shared breaker state for a fleet (extra "redis"); see docs/shared-state.md. The URL is
    # a secret: it may hold a password, so it is never shown.
    redis_url: SecretStr | None = None
    redis_prefix: str = Field(
        default="resilient_tts", min_length=1, max_length=100, pattern=r"^[\w.:-]+$"
    )
    redis_sync_interval: Seconds = Field(default=0.1, le=60)
    redis_timeout: Seconds = Field(default=0.1, le=10)

    @field_validator("models", mode="before")
    @classmethod
    def _field_names_are_strings(cls, value: Any) -> Any:
        # pydantic builds each Pool(**fields): a non-str key would be a bare TypeError.
        if isinstance(value, Mapping) and not all(
            not isinstance(pool, Mapping) or all(isinstance(key, str) for key in pool)
            for pool in value.values()
        ):
            raise ValueError(
                "each pool must be a mapping whose field names are strings, "
                'like {"deployments": [...]}'
            )
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        # The value is never echoed: it may hold a password.
        usage = "must be a redis://, rediss:// or unix:// URL, like redis://10.0.0.7:6379/0"
        try:
            parts = urlsplit(value.get_secret_value())
            parts.port  # noqa: B018 (raises ValueError when the port is not a number)
        except ValueError:
            raise ValueError(usage) from None
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(usage)
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError("must name a host, like redis://10.0.0.7:6379/0")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources = [init_settings, env_settings, dotenv_settings]
        path = _config_file_path(init_settings, env_settings, dotenv_settings)
        if path is not None:
            sources.append(_file_source(settings_cls, path))
        return tuple(sources)


def _config_file_path(*sources: PydanticBaseSettingsSource) -> Path | None:
    """The settings file, named by an argument, the environment or `.env`, in that order."""
    for source in sources:
        value = source().get("config_file")
        if value:
            return Path(value)
    return None


def _file_source(settings_cls: type[BaseSettings], path: Path) -> PydanticBaseSettingsSource:
    where = f"{ENV_PREFIX}CONFIG_FILE={str(path)!r}"
    if not path.is_file():
        raise ConfigurationError(f"{where}: no such file; point it at a TOML or YAML settings file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            return TomlConfigSettingsSource(settings_cls, toml_file=path)
        if suffix in (".yaml", ".yml"):
            return YamlConfigSettingsSource(settings_cls, yaml_file=path)
    except ImportError as exc:
        raise ConfigurationError(
            f"{where}: reading YAML needs PyYAML: pip install 'resilient-tts[yaml]'"
        ) from exc
    except ValueError as exc:  # tomllib.TOMLDecodeError and yaml's errors are ValueErrors
        raise ConfigurationError(f"{where}: not valid {suffix[1:].upper()}: {exc}") from exc
    raise ConfigurationError(f"{where}: unknown file type; use a .toml, .yaml or .yml file")


def load_settings(**overrides: Any) -> Settings:
    """Builds `Settings` from the arguments and the environment, or raises `ConfigurationError`."""
    try:
        with validating():
            return Settings(**overrides)
    except SettingsError as exc:
        # pydantic-settings says which field could not be parsed (malformed JSON, mostly).
        field = _field_named_in(str(exc))
        cause = exc.__cause__
        reason = (
            f"not valid JSON ({cause})" if isinstance(cause, json.JSONDecodeError) else str(exc)
        )
        raise ConfigurationError(f"{_variable(field, overrides)}: {reason}") from cause
    except ValidationError as exc:
        # Not chained: pydantic's own message echoes input values, which may hold a key.
        raise ConfigurationError(
            describe_validation_error(exc, lambda field: _variable(field, overrides))
        ) from None


def _field_named_in(message: str) -> str:
    # 'error parsing value for field "models" from source "EnvSettingsSource"'
    parts = message.split('"')
    return parts[1] if len(parts) > 2 else "models"


def _variable(field: str, overrides: Mapping[str, Any]) -> str:
    """Where a top-level field came from, as the user would write it."""
    if field in overrides:
        return f"SpeechClient({field}=...)"
    name = f"{ENV_PREFIX}{field.upper()}"
    if name in os.environ or not os.environ.get(f"{ENV_PREFIX}CONFIG_FILE"):
        return name
    return f"{name} (or '{field}' in {os.environ[f'{ENV_PREFIX}CONFIG_FILE']})"
