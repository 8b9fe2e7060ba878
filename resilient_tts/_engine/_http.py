"""The one HTTP client the engine calls every deployment through, and each deployment's
request line and headers.

Deployments are called with plain HTTP (`POST {base_url}/audio/speech`), not through an
`AsyncOpenAI` each: nothing reads ``OPENAI_API_KEY``, ``OPENAI_ORG_ID`` or
``OPENAI_PROJECT_ID`` and sends them to a self-hosted server, a deployment without `api_key`
sends no Authorization header at all, and there is one layer less on every request.
Redirects are not followed (a 3xx is that deployment's failure): a redirect to a host nobody
configured would re-send the text, and the key, there.
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
from .._version import __version__

__all__ = [
    "NO_AUTHORIZATION",
    "Transport",
    "build_http_client",
    "build_openai_client",
    "choose_transport",
    "request_headers",
    "speech_url",
]

Transport = Literal["auto", "httpx", "aiohttp"]
_USER_AGENT = f"resilient-tts/{__version__}"


def choose_transport(preference: Transport) -> Literal["httpx", "aiohttp"]:
    """aiohttp serves asyncio faster (see bench/overhead.py); httpx2 is the one trio can run."""
    if preference != "auto":
        return preference
    if sniffio.current_async_library() == "asyncio" and find_spec("aiohttp") is not None:
        return "aiohttp"
    return "httpx"


def build_http_client(kind: Literal["httpx", "aiohttp"]) -> httpx2.AsyncClient:
    """openai's own client classes (its limits; aiohttp through openai's httpx2 adapter), with
    our timeouts instead of theirs (anyio scopes), no redirects, and one TLS context shared by
    every client: building one loads the CA store, ~50 ms of blocking work."""
    client_class = DefaultAioHttpClient if kind == "aiohttp" else DefaultAsyncHttpxClient
    return client_class(timeout=None, verify=_ssl_context(), follow_redirects=False)


def speech_url(deployment: Deployment) -> str:
    return f"{deployment.base_url.rstrip('/')}/audio/speech"


def request_headers(deployment: Deployment) -> Mapping[str, str]:
    """The headers every request to `deployment` carries: its own key and nobody else's."""
    headers = {"Content-Type": "application/json", "User-Agent": _USER_AGENT}
    if deployment.api_key is not None and deployment.api_key.get_secret_value():
        headers["Authorization"] = f"Bearer {deployment.api_key.get_secret_value()}"
    return headers


# Sent with every request of a keyless deployment: openai's client refuses to send a request
# without credentials unless the Authorization header is explicitly omitted per request.
NO_AUTHORIZATION: Mapping[str, Omit] = {"Authorization": Omit()}


async def _no_key() -> str:
    return ""


def build_openai_client(  # for the CLI's models probe and bench/
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
