"""Builds the one `AsyncOpenAI` client each deployment talks through.

Each client has `max_retries=0` (resilient_tts owns retries) and is isolated from the
environment: the openai SDK would otherwise read ``OPENAI_API_KEY``, ``OPENAI_ORG_ID``,
``OPENAI_PROJECT_ID`` and ``OPENAI_ADMIN_KEY`` and send them to every server, including
self-hosted ones that must never see an OpenAI key. A deployment without `api_key` sends no
Authorization header at all.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Mapping
from importlib.util import find_spec
from typing import Any, Literal

import httpx2
import sniffio
from openai import AsyncOpenAI, DefaultAioHttpClient, DefaultAsyncHttpxClient, Omit

from .._config._values import Deployment

__all__ = ["NO_AUTHORIZATION", "Transport", "build_openai_client", "choose_transport"]

Transport = Literal["auto", "httpx", "aiohttp"]

# Sent with every request of a keyless deployment: openai's client refuses to send a request
# without credentials unless the Authorization header is explicitly omitted per request.
NO_AUTHORIZATION: Mapping[str, Omit] = {"Authorization": Omit()}


async def _no_key() -> str:
    return ""


def choose_transport(preference: Transport) -> Literal["httpx", "aiohttp"]:
    """aiohttp serves asyncio faster (see bench/overhead.py); httpx2 is the one trio can run."""
    if preference != "auto":
        return preference
    if sniffio.current_async_library() == "asyncio" and find_spec("aiohttp") is not None:
        return "aiohttp"
    return "httpx"


def build_openai_client(
    deployment: Deployment, *, transport: Literal["httpx", "aiohttp"]
) -> AsyncOpenAI:
    key = deployment.api_key.get_secret_value() if deployment.api_key is not None else None
    headers: dict[str, str | Omit] = {"OpenAI-Organization": Omit(), "OpenAI-Project": Omit()}
    headers["Authorization"] = f"Bearer {key}" if key else Omit()
    # openai's defaults (limits, redirects), with one TLS context shared by every deployment:
    # building one loads the CA store, ~50 ms of blocking work per deployment otherwise.
    client_class = DefaultAioHttpClient if transport == "aiohttp" else DefaultAsyncHttpxClient
    http_client = client_class(timeout=None, verify=_ssl_context())
    client = AsyncOpenAI(
        api_key=key or _no_key,
        admin_api_key="",
        organization="",
        project="",
        base_url=deployment.base_url,
        max_retries=0,
        # Our own first-byte, stall, attempt and deadline limits apply instead (anyio scopes).
        timeout=None,
        default_headers=headers,  # type: ignore[arg-type]  # openai accepts Omit here
        http_client=http_client,
    )
    # openai computes its platform headers in a worker thread on each client's first request.
    # We compute them once per process instead: one thread hop fewer per deployment, and no
    # real thread for trio's virtual clock to jump past in tests.
    if getattr(client, "_platform", "missing") is None:
        client._platform = _platform()
    return client


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    return httpx2.create_ssl_context()


@functools.cache
def _platform() -> Any:
    from openai._base_client import get_platform

    return get_platform()
