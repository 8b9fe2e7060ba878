"""Reads a LiteLLM proxy config into resilient_tts pools, for migrating off the proxy.

::

    imported = import_litellm_config("litellm_config.yaml")
    imported.warnings                              # what was not translated, one sentence each
    print(imported.to_toml())                      # a settings file; keys stay os.environ/VAR
    client = SpeechClient(**imported.client_arguments())   # = SpeechClient.from_litellm_config

What is translated: each ``model_list`` entry (``litellm_params.model`` ``openai/<id>``,
``api_base``, ``api_key`` including ``os.environ/VAR``, ``timeout``, ``order``) becomes a
deployment; entries sharing a ``model_name`` form that model's pool, ordered by ``order``.
``router_settings.fallbacks`` (``[{"kokoro": ["server1/kokoro", "server2/kokoro"]}]``) append
the fallback models' deployments to the pool, in order, so a placeholder model whose own
server refuses (LiteLLM's "could not find real modelID") fails over as its author meant.
``default_fallbacks``, ``timeout`` (the deadline), ``cooldown_time`` and ``num_retries: 0``
are translated too. Everything else is reported in `LiteLLMImport.warnings`, never dropped
in silence. Secrets in the file are never printed: `to_toml` and `to_json` keep
``os.environ/VAR`` references and replace a key written in the file by a reference to a
variable you set.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from .._core._retry import RetryPolicy
from .._exceptions import ConfigurationError
from ._values import Deployment, Pool

__all__ = ["LiteLLMImport", "import_litellm_config"]

ENV_PREFIX = "os.environ/"
OPENAI_BASE_URL = "https://api.openai.com/v1"
# Providers whose endpoint is an OpenAI-compatible POST /audio/speech resilient_tts can call.
_OPENAI_PROVIDERS = frozenset({"openai", "openai_like", "hosted_vllm"})
_KNOWN_PARAMS = frozenset({"model", "api_base", "api_key", "timeout", "order"})
_PARAM_NOTES = {
    "rpm": "no rate-based routing; a 429 makes the deployment cool down instead",
    "tpm": "no rate-based routing; a 429 makes the deployment cool down instead",
    "max_parallel_requests": "no concurrency limit per deployment",
    "weight": "deployments are tried in order, not weighted at random",
    "max_retries": "resilient_tts owns retries: at most one per deployment, for resets and 5xx",
    "stream_timeout": "use first_byte_timeout / stall_timeout (RESILIENT_TTS_FIRST_BYTE_TIMEOUT)",
    "api_version": "Azure-style API versions are not supported; use an OpenAI-compatible base URL",
    "organization": "no OpenAI organization header is sent",
}
_ROUTER_NOTES = {
    "allowed_fails": "breakers trip on consecutive failures or a failure rate (BreakerPolicy)",
    "retry_after": "retries honour the server's Retry-After instead",
    "routing_strategy": "deployments are tried in order, first preferred",
    "context_window_fallbacks": "does not apply to speech",
    "content_policy_fallbacks": "does not apply to speech",
    "enable_pre_call_checks": "input length is checked against each deployment's max_input_chars",
}
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class _Key:
    """An api_key: a reference to an environment variable, or a literal kept secret."""

    variable: str | None = None
    literal: SecretStr | None = None
    suggested: str | None = None  # the variable to move a literal key into


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str
    base_url: str
    model: str
    key: _Key | None
    timeout: float | None


@dataclass(frozen=True)
class LiteLLMImport:
    """A LiteLLM config translated: pools of deployments, global settings, and what was not.

    `pools` maps each logical model to its deployments' names, in order; `warnings` lists
    everything that could not be translated, one sentence each.
    """

    source: str
    pools: Mapping[str, tuple[str, ...]]
    settings: Mapping[str, float]
    warnings: tuple[str, ...]
    retries_disabled: bool = False
    _entries: Mapping[str, _Entry] = field(default_factory=dict, repr=False)

    def models(self, *, resolve_keys: bool = False) -> dict[str, dict[str, Any]]:
        """``RESILIENT_TTS_MODELS`` as a mapping. Keys stay ``os.environ/VAR`` references
        unless `resolve_keys`, which reads them from the environment (and keeps literal ones)."""
        return {
            pool: {
                "deployments": [
                    self._deployment(self._entries[name], resolve_keys) for name in names
                ]
            }
            for pool, names in self.pools.items()
        }

    def client_arguments(self) -> dict[str, Any]:
        """`SpeechClient` keyword arguments, with every ``os.environ/VAR`` key read now.

        Raises `ConfigurationError` naming the variable if one is not set.
        """
        arguments: dict[str, Any] = dict(self.settings)
        arguments["models"] = {
            pool: Pool(deployments=tuple(Deployment(**spec) for spec in model["deployments"]))
            for pool, model in self.models(resolve_keys=True).items()
        }
        if self.retries_disabled:
            arguments["retry"] = RetryPolicy(budget_capacity=0.0)
        return arguments

    def to_json(self) -> str:
        """The value for ``RESILIENT_TTS_MODELS``, keys as ``os.environ/VAR`` references."""
        return json.dumps(self.models(), indent=2)

    def to_env(self) -> str:
        """``.env`` lines: ``RESILIENT_TTS_MODELS='...'`` and the translated global settings."""
        models = (
            json.dumps(self.models(), separators=(",", ":"))
            .replace("\\", "\\\\")
            .replace("'", "\\'")
        )
        lines = [f"RESILIENT_TTS_MODELS='{models}'"]
        lines += [
            f"RESILIENT_TTS_{name.upper()}={value:g}" for name, value in self.settings.items()
        ]
        return "\n".join(lines) + "\n"

    def to_toml(self) -> str:
        """A settings file for ``RESILIENT_TTS_CONFIG_FILE``, keys as ``os.environ/VAR``."""
        lines = [
            f"# Translated from the LiteLLM config {self.source}"
            " by `resilient-tts config import-litellm`."
        ]
        lines += [f"{name} = {value!r}" for name, value in self.settings.items()]
        for pool, model in self.models().items():
            for deployment in model["deployments"]:
                lines += ["", f"[[models.{_toml_key(pool)}.deployments]]"]
                lines += [f"{key} = {_toml_value(value)}" for key, value in deployment.items()]
        return "\n".join(lines) + "\n"

    def _deployment(self, entry: _Entry, resolve: bool) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "name": entry.name,
            "base_url": entry.base_url,
            "model": entry.model,
        }
        if entry.key is not None:
            spec["api_key"] = (
                _resolve(entry, self.source)
                if resolve
                else f"{ENV_PREFIX}{entry.key.variable or entry.key.suggested}"
            )
        if entry.timeout is not None:
            spec["attempt_timeout"] = entry.timeout
        return spec


def import_litellm_config(path: str | PathLike[str]) -> LiteLLMImport:
    """Reads the LiteLLM proxy config at `path` (YAML; needs PyYAML, the ``yaml`` extra).

    Raises `ConfigurationError` if the file cannot be read or parsed, or holds no speech
    deployment that resilient_tts can call.
    """
    try:
        import yaml
    except ImportError:
        raise ConfigurationError(
            "reading a LiteLLM config needs PyYAML: pip install 'resilient-tts[yaml]'"
        ) from None
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(
            f"{source}: cannot read the LiteLLM config: {exc.strerror or exc}"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # Not str(exc): PyYAML quotes the offending line, which may hold a key.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigurationError(f"{source}: not valid YAML{where}: {problem}") from None
    return _Translation(source).run(data)


class _Translation:
    def __init__(self, source: str) -> None:
        self.source = source
        self.warnings: list[str] = []
        self.entries: dict[str, _Entry] = {}
        self.groups: dict[str, list[str]] = {}  # model_name -> entry names, in `order`
        self.unknown_params: dict[str, list[str]] = {}

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def run(self, data: object) -> LiteLLMImport:
        if not isinstance(data, Mapping) or not isinstance(data.get("model_list"), list):
            raise ConfigurationError(f"{self.source}: not a LiteLLM proxy config: no model_list")
        for key in data:
            if key not in (
                "model_list",
                "router_settings",
                "litellm_settings",
                "general_settings",
                "environment_variables",
            ):
                self.warn(f"top-level {key!r} not translated: resilient_tts does not know it")
        self._model_list(data["model_list"])
        router = _mapping(data.get("router_settings"))
        litellm = _mapping(data.get("litellm_settings"))
        pools = self._pools(router, litellm)
        settings, retries_disabled = self._settings(router, litellm)
        self._leftovers(router, litellm, data)
        if not pools:
            raise ConfigurationError(
                f"{self.source}: no speech deployment resilient_tts can call in model_list"
            )
        return LiteLLMImport(
            self.source, pools, settings, tuple(self.warnings), retries_disabled, self.entries
        )

    # -- model_list ----------------------------------------------------------------------

    def _model_list(self, model_list: list[Any]) -> None:
        parsed: list[tuple[str, float, int, Mapping[str, Any]]] = []
        skipped_modes: list[str] = []
        for index, raw in enumerate(model_list):
            entry = _mapping(raw)
            name = entry.get("model_name")
            params = _mapping(entry.get("litellm_params"))
            where = f"model_list[{index}]"
            if not isinstance(name, str) or not name or not isinstance(params.get("model"), str):
                self.warn(f"{where} skipped: it needs a model_name and litellm_params.model")
                continue
            mode = _mapping(entry.get("model_info")).get("mode")
            if mode is not None and mode != "audio_speech":
                skipped_modes.append(f"{name} ({mode})")
                continue
            order = params.get("order")
            parsed.append(
                (
                    name,
                    float(order) if isinstance(order, int | float) else float("inf"),
                    index,
                    params,
                )
            )
        if skipped_modes:
            self.warn(
                f"entries that are not speech models were skipped: {', '.join(skipped_modes)}"
            )
        first_seen: dict[str, int] = {}
        counts: dict[str, int] = {}
        for name, _, index, _ in parsed:
            first_seen.setdefault(name, index)
            counts[name] = counts.get(name, 0) + 1
        seen: dict[str, int] = {}
        ordered: set[str] = set()
        # Models in the file's order; within one, lower `order` first, then the file's order.
        for name, _, index, params in sorted(
            parsed, key=lambda item: (first_seen[item[0]], item[1], item[2])
        ):
            seen[name] = seen.get(name, 0) + 1
            entry_name = self._unique(name if counts[name] == 1 else f"{name}-{seen[name]}")
            translated = self._entry(entry_name, f"model_list[{index}] ({name})", params)
            if translated is not None:
                self.entries[entry_name] = translated
                self.groups.setdefault(name, []).append(entry_name)
                if "order" in params:
                    ordered.add(name)
        for name, names in self.groups.items():
            if len(names) > 1 and name not in ordered:
                self.warn(
                    f"{name!r} has {len(names)} deployments that LiteLLM load-balanced; "
                    "resilient_tts tries them in the order listed "
                    "(set litellm_params.order to choose)"
                )
        for param, entries in self.unknown_params.items():
            note = _PARAM_NOTES.get(param, "resilient_tts does not know it")
            self.warn(f"litellm_params.{param} of {', '.join(entries)} not translated: {note}")

    def _entry(self, name: str, where: str, params: Mapping[str, Any]) -> _Entry | None:
        model: str = params["model"]
        provider, _, model_id = model.partition("/")
        if not model_id:
            provider, model_id = "openai", model
        if provider not in _OPENAI_PROVIDERS:
            self.warn(
                f"{where} skipped: provider {provider!r} "
                "is not an OpenAI-compatible speech endpoint"
            )
            return None
        for param in params:
            if param not in _KNOWN_PARAMS:
                self.unknown_params.setdefault(param, []).append(where)
        base_url = params.get("api_base") or OPENAI_BASE_URL
        if isinstance(base_url, str) and base_url.startswith(ENV_PREFIX):
            # LiteLLM reads any os.environ/ value at load time; a base URL is no secret.
            variable = base_url.removeprefix(ENV_PREFIX)
            base_url = os.environ.get(variable, "")
            if not base_url:
                self.warn(
                    f"{where} skipped: its api_base is os.environ/{variable}, which is not set"
                )
                return None
        key = self._key(name, where, params.get("api_key"), official=base_url == OPENAI_BASE_URL)
        timeout = params.get("timeout")
        if timeout is not None and not (isinstance(timeout, int | float) and timeout > 0):
            self.warn(
                f"{where}: timeout {timeout!r} not translated: "
                "it must be a positive number of seconds"
            )
            timeout = None
        try:  # checked now, so a bad URL is reported against the entry that has it
            Deployment(name=name, base_url=str(base_url), model=model_id)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{self.source}: {where}.litellm_params: {exc}") from None
        return _Entry(
            name,
            str(base_url).rstrip("/"),
            model_id,
            key,
            float(timeout) if timeout is not None else None,
        )

    def _key(self, name: str, where: str, value: object, *, official: bool) -> _Key | None:
        if value is None:
            # LiteLLM falls back to OPENAI_API_KEY for OpenAI itself; self-hosted servers need none.
            return _Key(variable="OPENAI_API_KEY") if official else None
        if isinstance(value, str) and value.startswith(ENV_PREFIX):
            return _Key(variable=value.removeprefix(ENV_PREFIX))
        suggested = "RESILIENT_TTS_KEY_" + re.sub(r"[^A-Z0-9]+", "_", name.upper()).strip("_")
        self.warn(
            f"{where} has its api_key written in the file; it is never printed: "
            f"export it as {suggested} (the translation refers to os.environ/{suggested})"
        )
        return _Key(literal=SecretStr(str(value)), suggested=suggested)

    def _unique(self, label: str) -> str:
        name, n = label, 1
        while name in self.entries:
            n += 1
            name = f"{label}#{n}"
        return name

    # -- router_settings -----------------------------------------------------------------

    def _pools(
        self, router: Mapping[str, Any], litellm: Mapping[str, Any]
    ) -> dict[str, tuple[str, ...]]:
        fallbacks = self._fallbacks(router.get("fallbacks", litellm.get("fallbacks")))
        defaults = router.get("default_fallbacks", litellm.get("default_fallbacks")) or []
        if not isinstance(defaults, list):
            self.warn("default_fallbacks not translated: it must be a list of model names")
            defaults = []
        pools: dict[str, tuple[str, ...]] = {}
        for group in [*self.groups, *(g for g in fallbacks if g not in self.groups)]:
            chain = [group, *fallbacks.get(group, [str(d) for d in defaults])]
            names: list[str] = []
            for member in chain:
                if member not in self.groups:
                    if member != group:
                        self.warn(
                            f"fallback {member!r} of {group!r} not translated: "
                            "no such model in model_list"
                        )
                    continue
                names += [n for n in self.groups[member] if n not in names]
            if names:
                pools[group] = tuple(names)
        return pools

    def _fallbacks(self, value: object) -> dict[str, list[str]]:
        result: dict[str, list[str]] = {}
        if value is None:
            return result
        items = value if isinstance(value, list) else [value]
        for item in items:
            if not isinstance(item, Mapping):
                self.warn(
                    f"fallbacks item {item!r} not translated: expected {{model: [fallback models]}}"
                )
                continue
            for group, targets in item.items():
                listed = targets if isinstance(targets, list) else [targets]
                result.setdefault(str(group), []).extend(str(t) for t in listed)
        return result

    def _settings(
        self, router: Mapping[str, Any], litellm: Mapping[str, Any]
    ) -> tuple[dict[str, float], bool]:
        settings: dict[str, float] = {}
        timeout = router.get("timeout", litellm.get("request_timeout"))
        if isinstance(timeout, int | float) and timeout > 0:
            settings["deadline"] = float(timeout)
        cooldown = router.get("cooldown_time")
        if isinstance(cooldown, int | float) and cooldown > 0:
            settings["breaker_open_seconds"] = float(cooldown)
        retries = router.get("num_retries", litellm.get("num_retries"))
        disabled = retries == 0
        if disabled:
            self.warn(
                "num_retries: 0 is translated for SpeechClient.from_litellm_config only "
                "(retry=RetryPolicy(budget_capacity=0)); no environment variable expresses it"
            )
        elif retries is not None:
            self.warn(
                f"num_retries: {retries} not translated: "
                "resilient_tts retries a deployment at most once, "
                "for resets and 5xx, then fails over to the next"
            )
        return settings, disabled

    def _leftovers(
        self, router: Mapping[str, Any], litellm: Mapping[str, Any], data: Mapping[str, Any]
    ) -> None:
        done = {"fallbacks", "default_fallbacks", "timeout", "cooldown_time", "num_retries"}
        for key in router:
            if key not in done:
                note = _ROUTER_NOTES.get(key, "resilient_tts does not know it")
                self.warn(f"router_settings.{key} not translated: {note}")
        for key in litellm:
            if key not in {"fallbacks", "default_fallbacks", "request_timeout", "num_retries"}:
                self.warn(
                    f"litellm_settings.{key} not translated: "
                    "use hooks, logging or OpenTelemetry instead"
                )
        if data.get("general_settings"):
            self.warn(
                "general_settings not translated: "
                "they configure the proxy server, which is no longer needed"
            )
        if data.get("environment_variables"):
            self.warn(
                "environment_variables not translated (nor printed): set them in the environment"
            )


def _resolve(entry: _Entry, source: str) -> str:
    key = entry.key
    assert key is not None
    if key.literal is not None:
        return key.literal.get_secret_value()
    assert key.variable is not None
    value = os.environ.get(key.variable)
    if value is None:
        raise ConfigurationError(
            f"{source}: the api_key of deployment {entry.name!r} is os.environ/{key.variable}, "
            f"but {key.variable} is not set"
        )
    return value


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string: JSON's escapes are TOML's
