"""resilient_tts.testing: the fault-injecting speech server, over real loopback sockets."""

from __future__ import annotations

import email.utils
import io
import json
import os
import signal
import ssl
import struct
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import av
import httpx2
import pytest
import trio.testing
from anyio.abc import SocketStream

import resilient_tts.testing
from resilient_tts.testing import FakeSpeechServer, Fault, RecordedRequest, serve_pool
from resilient_tts.testing.__main__ import main as cli_main
from resilient_tts.testing.__main__ import parse_fault

SPEECH: dict[str, Any] = {
    "model": "kokoro",
    "voice": "alloy",
    "input": "Hello there.",
    "response_format": "wav",
}
LIMIT = 10  # seconds any one test may take, real or virtual
ROOT = Path(__file__).resolve().parents[1]
# Built once: every new httpx2 client would otherwise load the trust store again (~0.1 s).
TLS = ssl.create_default_context()


def mock_clock() -> pytest.MarkDecorator:
    """Run the test under trio with a fresh MockClock that jumps whenever all tasks wait."""
    clock = trio.testing.MockClock(autojump_threshold=0)
    backend = pytest.param(("trio", {"clock": clock}), id="trio-mockclock")
    return pytest.mark.parametrize("anyio_backend", [backend])


@asynccontextmanager
async def serving(
    fault: Fault | None = None, **options: Any
) -> AsyncIterator[tuple[FakeSpeechServer, httpx2.AsyncClient]]:
    """A running server and an HTTP client pointed at its base URL."""
    async with (
        FakeSpeechServer(fault, **options) as server,
        client_for(server) as client,
    ):
        yield server, client


def client_for(server: FakeSpeechServer) -> httpx2.AsyncClient:
    """An HTTP client for `server`; no timeout of its own, tests bound themselves."""
    return httpx2.AsyncClient(base_url=server.base_url, timeout=None, verify=TLS)


def root_url(server: FakeSpeechServer, path: str) -> str:
    """A URL outside the /v1 base, such as /health."""
    return f"http://127.0.0.1:{server.port}{path}"


async def speak(client: httpx2.AsyncClient, **overrides: Any) -> httpx2.Response:
    return await client.post("/audio/speech", json={**SPEECH, **overrides})


def raw_request(
    body: dict[str, Any] | bytes = SPEECH,
    *,
    method: str = "POST",
    path: str = "/v1/audio/speech",
    headers: tuple[str, ...] = (),
) -> bytes:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    lines = [f"{method} {path} HTTP/1.1", "Host: test", *headers]
    if method == "POST":
        lines.append(f"Content-Length: {len(payload)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (payload if method == "POST" else b"")


class RawConnection:
    """A hand-driven HTTP/1.1 client, for what httpx2 hides: cuts, stalls, resets, framing."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def _fill(self) -> None:
        self.buffer += await self.stream.receive()

    async def head(self) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self.buffer:
            await self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        fields = dict(line.split(": ", 1) for line in lines)
        return int(status_line.split(" ")[1]), {k.lower(): v for k, v in fields.items()}

    async def read(self, size: int) -> bytes:
        while len(self.buffer) < size:
            await self._fill()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    async def read_to_end(self) -> bytes:
        try:
            while True:
                await self._fill()
        except anyio.EndOfStream:
            pass
        data, self.buffer = self.buffer, b""
        return data

    async def exchange(self, request: bytes) -> bytes:
        """Send `request` and read until the server closes."""
        await self.stream.send(request)
        return await self.read_to_end()

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        status, headers = await self.head()
        return status, headers, await self.read(int(headers["content-length"]))


@asynccontextmanager
async def raw_connection(server: FakeSpeechServer) -> AsyncIterator[RawConnection]:
    async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
        yield RawConnection(stream)


async def until(condition: Any) -> None:
    """Yield to other tasks until `condition()` holds (bounded by the test's fail_after)."""
    while not condition():
        await anyio.lowlevel.checkpoint()


async def assert_refused(server: FakeSpeechServer) -> None:
    with pytest.raises(OSError, match="connection attempts failed") as caught:
        await anyio.connect_tcp("127.0.0.1", server.port)
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)


def wav_duration(data: bytes) -> tuple[int, float]:
    """(sample rate, seconds) of a mono 16-bit PCM WAV, checking every size field."""
    riff, riff_size, wave, fmt, fmt_size = struct.unpack_from("<4sI4s4sI", data)
    assert (riff, wave, fmt, fmt_size) == (b"RIFF", b"WAVE", b"fmt ", 16)
    assert riff_size == len(data) - 8
    tag, channels, rate, byte_rate, align, bits = struct.unpack_from("<HHIIHH", data, 20)
    assert (tag, channels, byte_rate, align, bits) == (1, 1, rate * 2, 2, 16)
    data_id, data_size = struct.unpack_from("<4sI", data, 36)
    assert data_id == b"data"
    assert data_size == len(data) - 44
    return rate, data_size / 2 / rate


# The public surface.


def test_public_surface_is_exactly_the_documented_names() -> None:
    """__all__ lists the public names, and each says it lives in resilient_tts.testing."""
    assert resilient_tts.testing.__all__ == [
        "FakeSpeechServer",
        "Fault",
        "RecordedRequest",
        "serve_pool",
    ]
    for name in resilient_tts.testing.__all__:
        assert getattr(resilient_tts.testing, name).__module__ == "resilient_tts.testing"


def test_faults_are_frozen_values() -> None:
    """Faults compare by value and cannot be changed."""
    assert Fault.ok() == Fault.ok()
    assert Fault.stall(10, 2.0) == Fault.stall(10, seconds=2.0)
    assert Fault.fail_times(2, Fault.reset()) == Fault.fail_times(2, Fault.reset(), Fault.ok())
    assert "Stall(after_bytes=10" in repr(Fault.stall(10))
    with pytest.raises(AttributeError):
        Fault.cut(5).after_bytes = 6  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Fault.stall(-1), "after_bytes"),
        (lambda: Fault.slow_first_byte(-0.5), "seconds"),
        (lambda: Fault.status(200), "status code"),
        (lambda: Fault.status(503, retry_after_date=True), "needs retry_after"),
        (lambda: Fault.not_audio("xml"), "kind"),  # type: ignore[arg-type]
        (lambda: Fault.wrong_format("ogg"), "actual"),
        (lambda: Fault.flapping(5, up_seconds=0), "up_seconds"),
        (lambda: Fault.fail_times(-1, Fault.hang()), "n must"),
    ],
)
def test_faults_reject_nonsense(build: Callable[[], Fault], message: str) -> None:
    """Impossible faults fail at construction with a message naming the field."""
    with pytest.raises(ValueError, match=message):
        build()


def test_only_loopback_hosts_are_accepted() -> None:
    """The server refuses to bind anything reachable from another machine."""
    with pytest.raises(ValueError, match="loopback"):
        FakeSpeechServer(host="0.0.0.0")  # noqa: S104 - the point of the test
    with pytest.raises(ValueError, match="loopback"):
        FakeSpeechServer(host="example.com")
    assert FakeSpeechServer(host="localhost").name == "fake-tts"


# Audio.


@pytest.mark.anyio
async def test_wav_has_exact_header_and_duration() -> None:
    """WAV is a proper RIFF file lasting len(input) * seconds_per_char."""
    with anyio.fail_after(LIMIT):
        async with serving(sample_rate=22050, seconds_per_char=0.05) as (_, client):
            response = await speak(client, input="x" * 20)
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/wav"
    assert wav_duration(response.content) == (22050, 1.0)


@pytest.mark.anyio
async def test_pcm_is_raw_samples_at_least_a_tenth_of_a_second() -> None:
    """PCM is bare s16le samples; one character still yields 0.1 s."""
    with anyio.fail_after(LIMIT):
        async with serving(sample_rate=24000) as (_, client):
            short = await speak(client, input="a", response_format="pcm")
            long = await speak(client, input="a" * 50, response_format="pcm")
    assert short.headers["content-type"] == "audio/pcm"
    assert len(short.content) == 2400 * 2
    assert len(long.content) == 12000 * 2
    assert max(struct.unpack("<100h", long.content[:200])) > 9000  # a tone, not silence


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("response_format", "content_type", "codec"),
    [
        ("mp3", "audio/mpeg", "mp3"),
        ("opus", "audio/ogg", "opus"),
        ("aac", "audio/aac", "aac"),
        ("flac", "audio/flac", "flac"),
    ],
)
async def test_encoded_formats_decode_to_the_right_duration(
    response_format: str, content_type: str, codec: str
) -> None:
    """mp3, opus (Ogg), aac (ADTS) and flac decode with FFmpeg to about the asked length."""
    with anyio.fail_after(LIMIT):
        async with serving(seconds_per_char=0.1) as (_, client):
            response = await speak(client, input="x" * 10, response_format=response_format)
    assert response.headers["content-type"] == content_type
    with av.open(io.BytesIO(response.content), mode="r") as container:
        stream = container.streams.audio[0]
        samples: int = sum(frame.samples for frame in container.decode(stream))
        assert stream.codec_context.name.startswith(codec)
        assert stream.channels == 1
        # AAC adds encoder priming (1024 samples) that ADTS has no way to trim.
        assert samples / stream.rate == pytest.approx(1.0, abs=0.1)


# Recording and changing faults.


@pytest.mark.anyio
async def test_hits_and_authorization_are_recorded() -> None:
    """Every speech request is counted and recorded, failed ones too, until reset."""
    with anyio.fail_after(LIMIT):
        async with serving() as (server, client):
            start = anyio.current_time()
            sk_a = {"Authorization": "Bearer sk-a"}
            await client.post("/audio/speech", json=SPEECH | {"voice": "nova"}, headers=sk_a)
            server.set_fault(Fault.status(500))
            await client.post("/audio/speech", json=SPEECH, headers={"X-Trace": "t1"})
            await client.get(root_url(server, "/health"))
            hits, requests = server.hits, server.requests
            server.reset_counters()
            assert (server.hits, server.requests) == (0, [])
    assert hits == 2
    first, second = requests
    assert isinstance(first, RecordedRequest)
    assert first.authorization == "Bearer sk-a"
    assert first.params == SPEECH | {"voice": "nova"}
    assert second.authorization is None
    assert second.headers["x-trace"] == "t1"
    assert second.headers["content-type"] == "application/json"
    assert start <= first.time <= second.time


@pytest.mark.anyio
async def test_fault_changes_while_running() -> None:
    """set_fault takes effect on the next request, on the same connection and port."""
    with anyio.fail_after(LIMIT):
        async with serving() as (server, client):
            port = server.port
            assert (await speak(client)).status_code == 200
            server.set_fault(Fault.status(503, retry_after=2))
            unavailable = await speak(client)
            server.set_fault(Fault.ok())
            assert (await speak(client)).status_code == 200
            assert server.port == port
    assert unavailable.status_code == 503
    assert unavailable.headers["retry-after"] == "2"
    assert unavailable.json()["error"]["type"] == "server_error"


@pytest.mark.anyio
async def test_status_carries_retry_hints_and_custom_bodies() -> None:
    """Retry-After as seconds or an HTTP-date, retry-after-ms, and a given body verbatim."""
    with anyio.fail_after(LIMIT):
        async with serving(Fault.status(429, retry_after_ms=1500)) as (server, client):
            in_ms = await speak(client)
            server.set_fault(Fault.status(503, retry_after=30, retry_after_date=True))
            dated = await speak(client)
            server.set_fault(Fault.status(502, retry_after=1.5, body="<h1>Bad Gateway</h1>"))
            custom = await speak(client)
    assert in_ms.status_code == 429
    assert in_ms.headers["retry-after-ms"] == "1500"
    assert "retry-after" not in in_ms.headers
    until_date = email.utils.parsedate_to_datetime(dated.headers["retry-after"]).timestamp()
    assert 25 <= until_date - time.time() <= 31
    assert custom.status_code == 502
    assert custom.headers["retry-after"] == "1.5"
    assert custom.text == "<h1>Bad Gateway</h1>"
    assert custom.headers["content-type"].startswith("text/plain")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fault", "status", "expected"),
    [
        (Fault.unauthorized(), 401, '"code": "invalid_api_key"'),
        (Fault.not_found(), 404, '"code": "model_not_found"'),
        (Fault.insufficient_quota(), 429, '"type": "insufficient_quota"'),
        (Fault.rate_limited(), 429, '"code": "rate_limit_exceeded"'),
        (Fault.model_not_found("tts-kokoro"), 400, "could not find real modelID for tts-kokoro"),
        (Fault.unsupported_voice(), 400, "Voice 'alloy' not found"),
        (Fault.unsupported_format(), 400, "unsupported response_format 'wav'"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
async def test_named_errors_look_like_the_real_servers(
    fault: Fault, status: int, expected: str
) -> None:
    """Each named error has its status and the body text a classifier would look for."""
    with anyio.fail_after(LIMIT):
        async with serving(fault) as (_, client):
            response = await speak(client)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")
    assert expected in response.text
    json.loads(response.text)


@pytest.mark.anyio
async def test_rate_limited_can_carry_retry_after() -> None:
    """Fault.rate_limited(retry_after=3) sends Retry-After: 3."""
    with anyio.fail_after(LIMIT):
        async with serving(Fault.rate_limited(retry_after=3)) as (_, client):
            response = await speak(client)
    assert (response.status_code, response.headers["retry-after"]) == (429, "3")


# Connection-level faults.


@pytest.mark.anyio
async def test_refuse_then_recover_on_the_same_port() -> None:
    """Refuse closes the port at once (pooled connections too); ok listens on it again."""
    with anyio.fail_after(LIMIT):
        async with serving() as (server, client):
            port = server.port
            assert (await speak(client)).status_code == 200  # leaves a pooled connection
            server.set_fault(Fault.refuse())
            await assert_refused(server)
            with pytest.raises(httpx2.ConnectError):
                await speak(client)
            with pytest.raises(httpx2.ConnectError):
                await client.get("/models")
            server.set_fault(Fault.ok())
            assert (await speak(client)).status_code == 200
            assert server.port == port
            assert server.hits == 2


@pytest.mark.anyio
async def test_refuse_from_the_start_still_reserves_a_port() -> None:
    """A server started refusing has a port, and serves on it once the fault changes."""
    with anyio.fail_after(LIMIT):
        async with serving(Fault.refuse()) as (server, client):
            await assert_refused(server)
            server.set_fault(Fault.ok())
            health = await client.get(root_url(server, "/health"))
            assert health.json() == {"status": "healthy"}


@pytest.mark.anyio
async def test_reset_reads_the_request_then_sends_rst() -> None:
    """Reset answers nothing: the client's read fails with a connection reset."""
    with anyio.fail_after(LIMIT):
        async with FakeSpeechServer(Fault.reset()) as server:
            async with raw_connection(server) as conn:
                await conn.stream.send(raw_request())
                with pytest.raises(anyio.BrokenResourceError) as caught:
                    await conn.read_to_end()
                assert isinstance(caught.value.__cause__, ConnectionResetError)
            assert server.hits == 1
            async with client_for(server) as client:
                with pytest.raises(httpx2.ReadError):
                    await speak(client)


@pytest.mark.anyio
@mock_clock()
async def test_hang_never_answers() -> None:
    """Hang reads the request and then stays silent, for speech and for health checks."""
    with anyio.fail_after(1000):
        async with serving(Fault.hang()) as (server, client):
            started = anyio.current_time()
            with anyio.move_on_after(600) as waited:
                await speak(client)
            assert waited.cancelled_caught
            with anyio.move_on_after(60) as waited_health:
                await client.get(root_url(server, "/health"))
            assert waited_health.cancelled_caught
            assert anyio.current_time() - started == pytest.approx(660)
            assert server.hits == 1


@pytest.mark.anyio
async def test_leaving_the_server_ends_hanging_connections() -> None:
    """Exiting the server cancels a connection stuck in hang and closes its socket."""
    with anyio.fail_after(LIMIT):
        async with FakeSpeechServer(Fault.hang()) as server:
            stream = await anyio.connect_tcp("127.0.0.1", server.port)
            await stream.send(raw_request())
            await until(lambda: server.hits == 1)
        async with stream:
            assert await RawConnection(stream).read_to_end() == b""


@pytest.mark.anyio
@mock_clock()
async def test_slow_first_byte_sends_nothing_until_the_delay() -> None:
    """slow_first_byte holds back even the status line, then answers normally."""
    with anyio.fail_after(100):
        async with (
            FakeSpeechServer(Fault.slow_first_byte(7)) as server,
            raw_connection(server) as conn,
        ):
            sent = anyio.current_time()
            await conn.stream.send(raw_request())
            status, headers = await conn.head()
            waited = anyio.current_time() - sent
            body = await conn.read(int(headers["content-length"]))
    assert status == 200
    assert waited == pytest.approx(7)
    assert wav_duration(body)[1] == pytest.approx(0.12)


@pytest.mark.anyio
@mock_clock()
async def test_stall_pauses_inside_the_body_then_finishes() -> None:
    """stall sends the full Content-Length, some bytes, silence, then the rest."""
    with anyio.fail_after(100):
        async with (
            FakeSpeechServer(Fault.stall(100, seconds=8)) as server,
            raw_connection(server) as conn,
        ):
            await conn.stream.send(raw_request())
            _, headers = await conn.head()
            first = await conn.read(100)
            before = anyio.current_time()
            rest = await conn.read(int(headers["content-length"]) - 100)
            paused = anyio.current_time() - before
    assert paused == pytest.approx(8)
    assert wav_duration(first + rest)[1] == pytest.approx(0.12)


@pytest.mark.anyio
@mock_clock()
async def test_stall_without_seconds_never_resumes() -> None:
    """stall(n) with no seconds leaves the body unfinished for good."""
    with anyio.fail_after(1000):
        async with FakeSpeechServer(Fault.stall(44)) as server, raw_connection(server) as conn:
            await conn.stream.send(raw_request())
            _, headers = await conn.head()
            assert await conn.read(44)
            with anyio.move_on_after(500) as waited:
                await conn.read(1)
    assert waited.cancelled_caught
    assert int(headers["content-length"]) > 44


@pytest.mark.anyio
async def test_cut_ends_the_body_short_of_content_length() -> None:
    """cut sends the full Content-Length, `after_bytes` of body, then closes."""
    with anyio.fail_after(LIMIT):
        async with FakeSpeechServer(Fault.cut(300)) as server:
            async with raw_connection(server) as conn:
                await conn.stream.send(raw_request())
                _, headers = await conn.head()
                body = await conn.read_to_end()
            async with client_for(server) as client:
                with pytest.raises(httpx2.RemoteProtocolError):
                    await speak(client)
    assert int(headers["content-length"]) == 44 + 5760
    assert len(body) == 300


@pytest.mark.anyio
async def test_chunked_bodies_arrive_in_several_chunks() -> None:
    """chunked=True streams audio with Transfer-Encoding: chunked; cut leaves it unterminated."""
    with anyio.fail_after(LIMIT):
        async with serving(chunked=True) as (server, client):
            response = await speak(client, input="x" * 100)
            async with raw_connection(server) as conn:
                await conn.stream.send(raw_request())
                _, headers = await conn.head()
                framed = await conn.read(5)
            server.set_fault(Fault.cut(1000))
            with pytest.raises(httpx2.RemoteProtocolError):
                await speak(client)
    assert response.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in response.headers
    assert wav_duration(response.content) == (24000, 1.0)
    assert headers["transfer-encoding"] == "chunked"
    assert framed.split(b"\r\n")[0] == b"%x" % 1451  # the first of four chunks of 5804 bytes


# Bodies that are not what was asked for.


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fault", "content_type", "start"),
    [
        (Fault.not_audio("json"), "application/json", b'{"error"'),
        (Fault.not_audio("html"), "text/html", b"<!DOCTYPE html>"),
        (Fault.not_audio("empty"), "audio/mpeg", b""),
    ],
    ids=["json", "html", "empty"],
)
async def test_not_audio_is_a_200_without_audio(
    fault: Fault, content_type: str, start: bytes
) -> None:
    """not_audio answers 200 with a JSON error, an nginx page, or an empty 'audio/mpeg'."""
    with anyio.fail_after(LIMIT):
        async with serving(fault) as (_, client):
            response = await speak(client)
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.content.startswith(start)
    assert bool(response.content) == bool(start)


@pytest.mark.anyio
async def test_wrong_format_ignores_the_requested_one() -> None:
    """wrong_format('wav') answers WAV when pcm was asked, as LocalAI does."""
    with anyio.fail_after(LIMIT):
        async with serving(Fault.wrong_format("wav")) as (server, client):
            labelled = await speak(client, response_format="pcm")
            server.set_fault(Fault.wrong_format("mp3", content_type="audio/aac"))
            mislabelled = await speak(client, response_format="aac")
    assert labelled.headers["content-type"] == "audio/wav"
    assert labelled.content[:4] == b"RIFF"
    assert mislabelled.headers["content-type"] == "audio/aac"
    assert mislabelled.content[:3] == b"ID3"


# Composite faults.


@pytest.mark.anyio
async def test_fail_times_then_recovers() -> None:
    """The first n speech requests get the fault; health checks do not use them up."""
    with anyio.fail_after(LIMIT):
        async with serving(Fault.fail_times(2, Fault.status(503))) as (server, client):
            first = await speak(client)
            assert (await client.get(root_url(server, "/health"))).status_code == 200
            codes = [first.status_code] + [(await speak(client)).status_code for _ in range(3)]
    assert codes == [503, 503, 200, 200]


@pytest.mark.anyio
async def test_refuse_inside_fail_times_resets_each_connection() -> None:
    """Refuse can't be counted while closed, so fail_times accepts and resets instead."""
    with anyio.fail_after(LIMIT):
        async with FakeSpeechServer(Fault.fail_times(1, Fault.refuse())) as server:
            async with raw_connection(server) as conn:
                with pytest.raises(anyio.BrokenResourceError):
                    await conn.exchange(raw_request())
            async with raw_connection(server) as conn:
                await conn.stream.send(raw_request())
                status, _, _ = await conn.response()
    assert status == 200
    assert server.hits == 1


@pytest.mark.anyio
@mock_clock()
async def test_flapping_refuses_then_comes_back() -> None:
    """flapping(30) refuses for 30 s from set_fault, then listens on the same port."""
    with anyio.fail_after(1000):
        async with serving() as (server, client):
            server.set_fault(Fault.flapping(30))
            await assert_refused(server)
            await anyio.sleep(29)
            await assert_refused(server)
            await anyio.sleep(2)
            assert (await speak(client)).status_code == 200


@pytest.mark.anyio
@mock_clock()
async def test_flapping_cycles_when_up_seconds_is_given() -> None:
    """With up_seconds the fault comes back: down 10 s, up 5 s, down 10 s, ..."""
    with anyio.fail_after(1000):
        async with serving(Fault.flapping(10, Fault.status(503), up_seconds=5)) as (_, client):
            seen = []
            for _ in range(4):
                seen.append((await speak(client)).status_code)
                await anyio.sleep(6)
    # t = 0, 6 (down), 12 (up), 18 (down: the second cycle starts at 15)
    assert seen == [503, 503, 200, 503]


@pytest.mark.anyio
@mock_clock()
async def test_flapping_refuse_cycles_the_listener() -> None:
    """Flapping refusal closes and reopens the real listening socket on schedule."""
    with anyio.fail_after(1000):
        async with serving(Fault.flapping(3, up_seconds=3)) as (server, client):
            await assert_refused(server)
            await anyio.sleep(4)
            assert (await speak(client)).status_code == 200
            await anyio.sleep(3)
            await assert_refused(server)


# What the server accepts.


@pytest.mark.anyio
async def test_formats_and_voices_can_be_limited() -> None:
    """Formats and voices outside the configured sets get the 400s real servers send."""
    with anyio.fail_after(LIMIT):
        async with serving(formats=("wav", "pcm"), voices={"af_heart"}) as (_, client):
            wrong_format = await speak(client, voice="af_heart", response_format="mp3")
            wrong_voice = await speak(client, voice="alloy")
            fine = await speak(client, voice="af_heart")
    assert wrong_format.status_code == 400
    assert "unsupported response_format 'mp3'" in wrong_format.json()["error"]["message"]
    assert wrong_voice.status_code == 400
    assert wrong_voice.json()["detail"]["message"].startswith("Voice 'alloy' not found")
    assert fine.status_code == 200


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"voice": "alloy", "input": "Hi"}, "model"),
        ({"model": "kokoro", "voice": "alloy"}, "input"),
        (SPEECH | {"input": ""}, "input"),
        (SPEECH | {"input": "Hi", "speed": 9}, "speed"),
        (SPEECH | {"input": "Hi", "response_format": "ogg"}, "response_format"),
        (SPEECH | {"input": "x" * 11}, "input"),
        (b"not json", None),
    ],
    ids=["no-model", "no-input", "empty-input", "speed", "format", "too-long", "not-json"],
)
async def test_bad_requests_get_openai_style_400s(
    body: dict[str, Any] | bytes, param: str | None
) -> None:
    """Missing or invalid parameters are rejected the way OpenAI rejects them."""
    with anyio.fail_after(LIMIT):
        async with serving(max_input_chars=10) as (server, client):
            if isinstance(body, bytes):
                response = await client.post("/audio/speech", content=body)
            else:
                response = await client.post("/audio/speech", json=body)
            assert server.hits == 1
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


@pytest.mark.anyio
async def test_models_health_and_unknown_routes() -> None:
    """GET /v1/models lists the model, /health is 200, other routes and methods are refused."""
    with anyio.fail_after(LIMIT):
        async with serving(model="tts-kokoro") as (server, client):
            models = await client.get("/models")
            health = await client.get(root_url(server, "/health"))
            wrong_method = await client.get("/audio/speech")
            unknown = await client.post("/chat/completions", json={})
            assert server.hits == 0
    assert models.json() == {
        "object": "list",
        "data": [{"id": "tts-kokoro", "object": "model", "created": 0, "owned_by": "fake-tts"}],
    }
    assert health.status_code == 200
    assert (wrong_method.status_code, wrong_method.headers["allow"]) == (405, "POST")
    assert unknown.status_code == 404


# HTTP/1.1 itself.


@pytest.mark.anyio
async def test_keep_alive_pipelining_and_connection_close() -> None:
    """Requests share a connection, even pipelined; Connection: close ends it after the reply."""
    with anyio.fail_after(LIMIT):
        async with FakeSpeechServer() as server, raw_connection(server) as conn:
            await conn.stream.send(raw_request() + raw_request(SPEECH | {"input": "x"}))
            first = await conn.response()
            second = await conn.response()
            await conn.stream.send(raw_request(headers=("Connection: close",)))
            third = await conn.response()
            assert await conn.read_to_end() == b""
    assert [r[0] for r in (first, second, third)] == [200, 200, 200]
    assert len(second[2]) == 44 + 4800
    assert third[1]["connection"] == "close"
    assert "connection" not in first[1]


@pytest.mark.anyio
async def test_chunked_requests_and_expect_continue() -> None:
    """A chunked request body is decoded; Expect: 100-continue gets its interim response."""
    payload = json.dumps(SPEECH).encode()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
    head = b"POST /v1/audio/speech HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    with anyio.fail_after(LIMIT):
        async with FakeSpeechServer() as server, raw_connection(server) as conn:
            await conn.stream.send(head + chunked)
            status, _, _ = await conn.response()
            await conn.stream.send(raw_request(headers=("Expect: 100-continue",)))
            interim, _ = await conn.head()
            final, _, _ = await conn.response()
            assert server.requests[0].params == SPEECH
    assert (status, interim, final) == (200, 100, 200)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"NONSENSE\r\n\r\n", 400),
        (b"GET /health HTTP/2.0\r\nHost: t\r\n\r\n", 505),
        (b"GET /health HTTP/1.1\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nHost : t\r\n\r\n", 400),
        (b"POST /v1/audio/speech HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n", 400),
    ],
    ids=["garbage", "http2", "no-host", "space-before-colon", "bad-length"],
)
async def test_malformed_requests_get_an_error_and_a_close(
    request_bytes: bytes, status: int
) -> None:
    """A request the server cannot parse gets a 4xx/5xx with Connection: close."""
    with anyio.fail_after(LIMIT):
        async with FakeSpeechServer() as server, raw_connection(server) as conn:
            await conn.stream.send(request_bytes)
            code, headers, _ = await conn.response()
            assert await conn.read_to_end() == b""
    assert (code, headers["connection"]) == (status, "close")


@pytest.mark.anyio
async def test_clients_leaving_mid_response_do_not_hurt_the_server() -> None:
    """A client that hangs up during a big body or a stall leaves the server serving."""
    with anyio.fail_after(LIMIT):
        async with serving(Fault.stall(10)) as (server, client):
            async with raw_connection(server) as conn:
                await conn.stream.send(raw_request())
                await conn.head()
            server.set_fault(Fault.ok())
            for _ in range(3):
                async with raw_connection(server) as conn:
                    await conn.stream.send(raw_request(SPEECH | {"input": "x" * 3000}))
                    await conn.head()
            assert (await speak(client)).status_code == 200


# Helpers and the command line.


@pytest.mark.anyio
async def test_serve_pool_runs_servers_side_by_side() -> None:
    """serve_pool(3) starts three named servers on three ports and stops them all."""
    with anyio.fail_after(LIMIT):
        async with serve_pool(3) as servers:
            assert [s.name for s in servers] == ["server-0", "server-1", "server-2"]
            assert len({s.port for s in servers}) == 3
            servers[1].set_fault(Fault.refuse())
            await assert_refused(servers[1])
        for server in servers:
            await assert_refused(server)


@pytest.mark.parametrize(
    ("spec", "fault"),
    [
        ("ok", Fault.ok()),
        ("refuse", Fault.refuse()),
        ("hang", Fault.hang()),
        ("reset", Fault.reset()),
        ("slow:2.5", Fault.slow_first_byte(2.5)),
        ("stall:100", Fault.stall(100)),
        ("stall:100:3", Fault.stall(100, 3)),
        ("cut:50", Fault.cut(50)),
        ("status:503", Fault.status(503)),
        ("status:429:2", Fault.status(429, retry_after=2)),
        ("model-not-found", Fault.model_not_found()),
        ("model-not-found:tts-1", Fault.model_not_found("tts-1")),
        ("not-audio:html", Fault.not_audio("html")),
        ("unauthorized", Fault.unauthorized()),
        ("insufficient-quota", Fault.insufficient_quota()),
        ("rate-limited:4", Fault.rate_limited(4)),
        ("unsupported-voice", Fault.unsupported_voice()),
        ("wrong-format:wav", Fault.wrong_format("wav")),
        ("flapping:5:10", Fault.flapping(5, up_seconds=10)),
        ("fail-times:2:status:500", Fault.fail_times(2, Fault.status(500))),
    ],
)
def test_cli_fault_syntax(spec: str, fault: Fault) -> None:
    """Each --fault spelling builds the matching Fault."""
    assert parse_fault(spec) == fault


@pytest.mark.parametrize("spec", ["", "explode", "slow", "slow:soon", "not-audio:xml", "ok:1"])
def test_cli_rejects_unknown_faults(spec: str) -> None:
    """A bad --fault is a ValueError that lists the syntax."""
    with pytest.raises(ValueError, match="expected ok"):
        parse_fault(spec)


def test_cli_rejects_non_loopback_hosts(capsys: pytest.CaptureFixture[str]) -> None:
    """--host 0.0.0.0 exits with status 2 and says why."""
    with pytest.raises(SystemExit) as exited:
        cli_main(["--host", "0.0.0.0"])  # noqa: S104 - the point of the test
    assert exited.value.code == 2
    assert "loopback" in capsys.readouterr().err


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # a subprocess: once is enough
async def test_cli_serves_until_sigterm() -> None:
    """`python -m resilient_tts.testing` prints its base URL, serves, and exits 0 on SIGTERM."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "resilient_tts.testing", "--fault", "status:503:2"]
    with anyio.fail_after(60):  # the child imports openai, slow on a busy machine
        async with await anyio.open_process(command, env=env) as process:
            assert process.stdout is not None
            line = b""
            async for data in process.stdout:
                line += data
                if b"\n" in line:
                    break
            base_url = line.decode().strip()
            async with httpx2.AsyncClient(base_url=base_url, verify=TLS) as client:
                response = await speak(client)
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
    assert base_url.startswith("http://127.0.0.1:")
    assert base_url.endswith("/v1")
    assert (response.status_code, response.headers["retry-after"]) == (503, "2")
