"""The docs are tested: their Python blocks run against loopback fake servers, the
configuration page lists every setting with its default, and the site builds with --strict.

Markers, on the line right above a fenced block:

- ``<!-- no-test -->``: a fragment that is not meant to run on its own;
- ``<!-- file: NAME -->``: the block is written to NAME (in the page's working directory)
  before the page's Python blocks run, e.g. a settings file or a LiteLLM config;
- ``<!-- requires: MODULE -->``: skipped when MODULE (an optional extra) is not installed.

A block is either a script (it runs its own event loop: ``asyncio.run(main())``) or a
notebook-style fragment with top-level ``await``: that runs on an event loop with ``client``,
a `SpeechClient()` configured as below, already open.

The docs' example hosts are served by fake servers: gpu-a at ``http://10.0.0.5:8880/v1``,
gpu-b at ``http://10.0.0.6:8880/v1``, a third at ``http://10.0.0.7:8880/v1`` and OpenAI's
``https://api.openai.com/v1``; ``RESILIENT_TTS_MODELS`` holds the pool ``kokoro`` = gpu-a,
gpu-b, as the quickstart configures it.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import CodeType

import anyio
import pytest
import yaml
from anyio.from_thread import start_blocking_portal

from resilient_tts import SpeechClient
from resilient_tts._config._settings import ENV_PREFIX, Settings
from resilient_tts.testing import FakeSpeechServer

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLE_HOSTS = {
    "http://10.0.0.5:8880/v1": "gpu-a",
    "http://10.0.0.6:8880/v1": "gpu-b",
    "http://10.0.0.7:8880/v1": "server-c",
    "https://api.openai.com/v1": "openai",
}
_FENCE = re.compile(r"^```(\w*)\s*$")
_MARKER = re.compile(r"^<!--\s*([\w-]+)(?::\s*(.*?))?\s*-->$")


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    language: str
    code: str
    markers: dict[str, str]

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """Every fenced block of a page, with the markers on the line above it."""
    found: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        fence = _FENCE.match(lines[index])
        if fence is None:
            index += 1
            continue
        markers: dict[str, str] = {}
        above = index - 1
        while above >= 0 and (marker := _MARKER.match(lines[above].strip())):
            markers[marker.group(1)] = marker.group(2) or ""
            above -= 1
        end = index + 1
        while not lines[end].startswith("```"):
            end += 1
        code = "\n".join(lines[index + 1 : end]) + "\n"
        found.append(Block(page.name, index + 1, fence.group(1), code, markers))
        index = end + 1
    return found


PAGES = sorted(DOCS.glob("*.md"))
PYTHON_BLOCKS = [
    b
    for page in PAGES
    for b in blocks(page)
    if b.language == "python" and "no-test" not in b.markers
]


@pytest.fixture
def example_servers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Fake servers for the docs' example hosts, the quickstart's environment, a clean cwd."""
    with start_blocking_portal("asyncio") as portal, ExitStack() as stack:
        urls = {}
        for url, name in EXAMPLE_HOSTS.items():
            server = stack.enter_context(
                portal.wrap_async_context_manager(FakeSpeechServer(name=name))
            )
            urls[url] = server.base_url
        for variable in [v for v in os.environ if v.startswith(ENV_PREFIX)]:
            monkeypatch.delenv(variable)
        pool = [
            {"name": n, "base_url": urls[u], "model": "kokoro"}
            for u, n in list(EXAMPLE_HOSTS.items())[:2]
        ]
        monkeypatch.setenv("RESILIENT_TTS_MODELS", json.dumps({"kokoro": {"deployments": pool}}))
        monkeypatch.chdir(tmp_path)
        yield urls


def substitute(text: str, urls: dict[str, str]) -> str:
    for example, real in urls.items():
        text = text.replace(example, real)
    return text


@pytest.fixture
def quiet_logging() -> Iterator[None]:
    """A docs block may configure logging; leave the process as it was."""
    logger = logging.getLogger("resilient_tts")
    saved = (logger.level, list(logger.handlers), logger.propagate)
    yield
    logger.setLevel(saved[0])
    logger.handlers[:] = saved[1]
    logger.propagate = saved[2]


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[b.id for b in PYTHON_BLOCKS])
def test_python_block_runs(
    block: Block, example_servers: dict[str, str], quiet_logging: None
) -> None:
    """Each Python example in the docs runs as written, against the example deployments."""
    required = block.markers.get("requires")
    if required and importlib.util.find_spec(required.split(".")[0]) is None:
        pytest.skip(f"needs {required}")
    if required:
        pytest.importorskip(required)
    for other in blocks(DOCS / block.page):
        if "file" in other.markers:
            Path(other.markers["file"]).write_text(substitute(other.code, example_servers))
    source = substitute(block.code, example_servers)
    namespace: dict[str, object] = {"__name__": "__main__"}
    try:
        code = compile(source, f"docs/{block.id}", "exec")
    except SyntaxError:  # top-level await: a fragment of an async session
        code = compile(source, f"docs/{block.id}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        anyio.run(_in_session, code, namespace)
    else:
        exec(code, namespace)  # noqa: S102 - running our own docs is the point


async def _in_session(code: CodeType, namespace: dict[str, object]) -> None:
    async with SpeechClient() as client:
        namespace["client"] = client
        result = eval(code, namespace)  # noqa: S307 - our own docs; a coroutine when it awaits
        if result is not None:
            await result


def test_most_python_blocks_run() -> None:
    """The docs are executable: fragments marked no-test stay the exception."""
    python = [b for page in PAGES for b in blocks(page) if b.language == "python"]
    assert len(PYTHON_BLOCKS) >= 10
    assert len(PYTHON_BLOCKS) >= 0.8 * len(python)


def test_configuration_page_lists_every_setting_with_its_default() -> None:
    """docs/configuration.md stays in sync with `Settings`: every variable, its real default."""
    rows = {}
    for line in (DOCS / "configuration.md").read_text().splitlines():
        match = re.match(r"^\| `(RESILIENT_TTS_\w+)` \|.*\| (.+?) \|$", line)
        if match:
            rows[match.group(1)] = match.group(2).strip("`")
    expected = {}
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = (
            "none"
            if default is None
            else "{}"
            if default == {}
            else f"{default:g}"
            if isinstance(default, float)
            else str(default)
        )
        expected[f"{ENV_PREFIX}{name.upper()}"] = shown
    assert rows == expected


def test_nav_lists_every_page() -> None:
    """Every page is reachable from the site's navigation, and the nav has no dead entry."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = {next(iter(entry.values())) for entry in config["nav"]}
    assert pages == {page.name for page in PAGES}


def test_site_builds_strictly(tmp_path: Path) -> None:
    """`mkdocs build --strict` succeeds: no broken link, no unresolved API reference."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reference = (tmp_path / "site" / "reference" / "index.html").read_text()
    for name in (
        "SpeechClient",
        "OpenTelemetryHook",
        "ClientHealth",
        "import_litellm_config",
        "FakeSpeechServer",
    ):
        assert (
            f'id="resilient_tts.{name}"' in reference
            or f'id="resilient_tts.testing.{name}"' in reference
        )
