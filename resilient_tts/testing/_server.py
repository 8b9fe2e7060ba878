"""`FakeSpeechServer`: an OpenAI-compatible TTS server on loopback that fails on command.

The server owns its listening socket (a plain non-blocking `socket.socket`, awaited with
`anyio.wait_readable`) rather than an anyio listener, so that `set_fault(Fault.refuse())` can
stop listening synchronously: the very next connect gets ECONNREFUSED, with no task switch in
between. Accepted connections are anyio socket streams.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import itertools
import json
import math
import socket
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Collection, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

import anyio
from anyio.abc import SocketAttribute, SocketStream, TaskGroup

from ._audio import CONTENT_TYPES, FORMATS, clip_audio, sample_count, speech_audio
from ._bodies import (
    not_audio,
    openai_error,
    speech_events,
    unknown_voice,
    unsupported_format,
    validate_speech,
)
from ._faults import (
    Cut,
    Fault,
    FaultClock,
    Hang,
    NotAudio,
    Ok,
    Refuse,
    Reset,
    SlowFirstByte,
    Stall,
    Status,
    Truncated,
    UnsupportedFormat,
    UnsupportedVoice,
    WrongFormat,
    listener_plan,
    resolve,
)
from ._http import HTTPError, PeerClosed, Request, RequestReader, chunk, http_date, response_head

MAX_RECORDED = 10_000
"""`FakeSpeechServer.requests` keeps this many of the most recent requests."""

_SPEECH_PATH = "/v1/audio/speech"
_JSON = "application/json"
# Wake a microsecond after a flapping boundary, so float rounding never lands just before it.
_SCHEDULE_SLACK = 1e-6
# How long a closing connection waits for the client's FIN before giving up (RFC 9112 9.6).
_LINGER_SECONDS = 2.0
_LINGER_ZERO = struct.pack("ii", 1, 0)
_OS_STARVED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# What happens to a connection after one exchange.
_Next = Literal["keep-alive", "close", "reset", "gone"]
_PEER_GONE = (
    PeerClosed,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    OSError,
)


@dataclass(frozen=True)
class RecordedRequest:
    """One ``POST /v1/audio/speech`` as the server received it."""

    authorization: str | None
    """The raw Authorization header, e.g. ``"Bearer sk-a"``, or None."""
    params: dict[str, Any]
    """The parsed JSON body; empty if it was not a JSON object."""
    headers: dict[str, str]
    """Every header, names in lower case."""
    time: float
    """`anyio.current_time()` when the request was fully read."""
    body: bytes = field(repr=False)
    """The raw body."""


class FakeSpeechServer:
    """An OpenAI-compatible ``POST /v1/audio/speech`` server on loopback, with injected faults.

    ```python
    async with FakeSpeechServer(fault=Fault.ok(), name="gpu-a") as server:
        client = AsyncOpenAI(base_url=server.base_url, api_key="sk-test")
        server.set_fault(Fault.status(503, retry_after=2))
    ```

    It answers with a 440 Hz tone lasting ``len(input) * seconds_per_char`` seconds (at least
    0.1 s), or with `clip` if given, in the requested format at `sample_rate`; also serves
    ``GET /v1/models`` and ``GET /health``, and stops every task and socket it started when
    the ``async with`` block ends.
    """

    def __init__(
        self,
        fault: Fault | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        sample_rate: int = 24000,
        seconds_per_char: float = 0.01,
        name: str = "fake-tts",
        model: str = "kokoro",
        formats: Collection[str] = FORMATS,
        voices: Collection[str] | None = None,
        chunked: bool = False,
        max_input_chars: int | None = None,
        clip: bytes | None = None,
    ) -> None:
        """Configure the server; nothing listens until ``async with``.

        `fault` defaults to `Fault.ok()`. `formats` limits the response formats served (others
        get a 400), `voices` if given limits the voices (others get Kokoro-FastAPI's 400), and
        `chunked` sends audio with ``Transfer-Encoding: chunked`` in several chunks, as
        streaming servers do. `clip`, s16le mono PCM at `sample_rate` (real speech from
        espeak-ng, say), is what every request gets instead of the tone, whatever its input.
        Only loopback hosts are accepted.
        """
        self._host = loopback_host(host)
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, got {port}")
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
        if not (seconds_per_char >= 0 and math.isfinite(seconds_per_char)):
            raise ValueError(f"seconds_per_char must be >= 0, got {seconds_per_char}")
        if clip is not None and (not clip or len(clip) % 2):
            raise ValueError("clip must be s16le PCM: a non-empty, even number of bytes")
        unknown = set(formats) - set(FORMATS)
        if unknown or not formats:
            raise ValueError(f"formats must be a non-empty subset of {FORMATS}, got {formats!r}")
        self.name = name
        self.model = model
        self.sample_rate = sample_rate
        self.seconds_per_char = seconds_per_char
        self.formats = tuple(f for f in FORMATS if f in formats)
        self.voices = None if voices is None else frozenset(voices)
        self.chunked = chunked
        self.max_input_chars = max_input_chars
        self.clip = clip

        self._fault: Fault = Ok() if fault is None else fault
        self._clock = FaultClock(started_at=0.0)
        self._port = port
        self._family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        self._sock: socket.socket | None = None
        self._listening = False
        self._task_group: TaskGroup | None = None
        self._changed: anyio.Event | None = None
        self._connections: dict[anyio.CancelScope, socket.socket] = {}
        self._hits = 0
        self._requests: deque[RecordedRequest] = deque(maxlen=MAX_RECORDED)
        self._request_ids = itertools.count(1)

    def __repr__(self) -> str:
        where = self.base_url if self._port else "not started"
        return f"<FakeSpeechServer {self.name!r} {where} fault={self._fault!r}>"

    # Public state.

    @property
    def port(self) -> int:
        """The TCP port; chosen by the OS at start when constructed with ``port=0``."""
        if not self._port:
            raise RuntimeError("the server has no port until it starts (async with)")
        return self._port

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, e.g. ``http://127.0.0.1:8880/v1``."""
        host = f"[{self._host}]" if self._family == socket.AF_INET6 else self._host
        return f"http://{host}:{self.port}/v1"

    @property
    def fault(self) -> Fault:
        """The fault set now."""
        return self._fault

    @property
    def open_connections(self) -> int:
        """Client connections open now: 0 once a client that left mid-body has really gone."""
        return len(self._connections)

    @property
    def hits(self) -> int:
        """Number of ``POST /v1/audio/speech`` requests received, failed ones included."""
        return self._hits

    @property
    def requests(self) -> list[RecordedRequest]:
        """The speech requests received, oldest first (the last `MAX_RECORDED`)."""
        return list(self._requests)

    def audio(self, response_format: str, input: str) -> bytes:
        """The body this server sends for `input` in `response_format` when nothing goes wrong.

        For tests that check what a client did with it: that a pass-through returned exactly
        these bytes, say.
        """
        if response_format not in FORMATS:
            raise ValueError(f"response_format must be one of {', '.join(FORMATS)}")
        return self._audio(response_format, input, mp4=False)

    def _audio(self, response_format: str, text: str, *, mp4: bool) -> bytes:
        if self.clip is not None:
            return clip_audio(response_format, self.clip, self.sample_rate, mp4=mp4)
        seconds = max(0.1, len(text) * self.seconds_per_char)
        samples = sample_count(seconds, self.sample_rate)
        return speech_audio(response_format, samples, self.sample_rate, mp4=mp4)

    def reset_counters(self) -> None:
        """Forget `hits` and `requests` (not the progress of a `Fault.fail_times`)."""
        self._hits = 0
        self._requests.clear()

    def set_fault(self, fault: Fault) -> None:
        """Switch to `fault` now; `fail_times` counts and `flapping` time start from here.

        Switching to `Fault.refuse()` closes the listening socket and drops every open
        connection before returning, as a crashed server would; switching away listens again
        on the same port.
        """
        self._fault = fault
        if self._task_group is None:
            return
        self._clock = FaultClock(started_at=anyio.current_time())
        self._apply_listener_plan()
        self._signal()

    # Lifecycle.

    async def __aenter__(self) -> Self:
        if self._task_group is not None:
            raise RuntimeError(f"{self!r} is already running")
        self._clock = FaultClock(started_at=anyio.current_time())
        self._changed = anyio.Event()
        self._sock = self._bind()
        try:
            self._apply_listener_plan()
        except BaseException:
            self._close_socket()
            raise
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        task_group.start_soon(self._accept_loop)
        task_group.start_soon(self._follow_schedule)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        task_group = self._task_group
        if task_group is None:
            return
        task_group.cancel_scope.cancel()
        try:
            # Not the body's exception: trio would wrap it in an ExceptionGroup, and the
            # caller should see it unchanged.
            await task_group.__aexit__(None, None, None)
        finally:
            self._task_group = None
            self._changed = None
            self._close_socket()

    # Listening socket.

    def _bind(self) -> socket.socket:
        sock = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            # Reuse the port at once after refuse, despite connections in TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setblocking(False)
            sock.bind((self._host, self._port))
        except BaseException:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        return sock

    def _close_socket(self) -> None:
        sock, self._sock, self._listening = self._sock, None, False
        if sock is not None:
            anyio.notify_closing(sock)
            sock.close()

    def _apply_listener_plan(self) -> float | None:
        """Listen or refuse as the fault says now; return when that may change next."""
        now = anyio.current_time()
        refusing, change = listener_plan(self._fault, now - self._clock.started_at)
        if refusing and self._listening:
            self._close_socket()
            # A bound socket that does not listen answers SYN with RST (ECONNREFUSED) and
            # keeps the port ours, so no other socket can take it meanwhile.
            with contextlib.suppress(OSError):
                self._sock = self._bind()
            # A dead server takes its connections with it. shutdown() sends the FIN now (so a
            # client's pool sees the idle connection die before reusing it) without closing
            # the descriptor under the event loop; the cancelled task closes it.
            for scope, conn in self._connections.items():
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                scope.cancel()
        elif not refusing and not self._listening:
            if self._sock is None:
                self._sock = self._bind()
            self._sock.listen(1024)
            self._listening = True
            self._signal()
        return None if change is None else self._clock.started_at + change

    def _signal(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = anyio.Event()

    async def _follow_schedule(self) -> None:
        """Open and close the port on time for `Fault.flapping`."""
        while True:
            changed = self._changed
            assert changed is not None
            change_at = self._apply_listener_plan()
            deadline = math.inf if change_at is None else change_at + _SCHEDULE_SLACK
            with anyio.CancelScope(deadline=deadline):
                await changed.wait()

    async def _accept_loop(self) -> None:
        task_group = self._task_group
        assert task_group is not None
        while True:
            sock = self._sock
            if sock is None or not self._listening:
                assert self._changed is not None
                await self._changed.wait()
                continue
            try:
                await anyio.wait_readable(sock)
            except anyio.ClosedResourceError:
                continue  # closed for refuse while we waited
            for _ in range(64):  # accept a burst, then let others run
                try:
                    conn, _address = sock.accept()
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno in _OS_STARVED:
                        await anyio.sleep(0.1)
                    break
                task_group.start_soon(self._serve_connection, conn)

    # One connection.

    async def _serve_connection(self, conn: socket.socket) -> None:
        with anyio.CancelScope() as scope:
            self._connections[scope] = conn
            try:
                if isinstance(self._current_fault(consume=False), Refuse):
                    # Refuse inside fail_times (or a flapping edge): accept and reset at once.
                    self._current_fault(consume=True)
                    _linger_zero(conn)
                    conn.close()
                    return
                with contextlib.suppress(OSError):
                    # Headers and body go out in separate writes; Nagle would delay them.
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                try:
                    stream = await SocketStream.from_socket(conn)
                except BaseException:
                    conn.close()
                    raise
                try:
                    await self._converse(stream)
                except _PEER_GONE:
                    pass  # the client left mid-exchange: nothing to answer
                finally:
                    await anyio.aclose_forcefully(stream)
            finally:
                del self._connections[scope]

    async def _converse(self, stream: SocketStream) -> None:
        reader = RequestReader(stream)
        while True:
            try:
                request = await reader.next_request()
            except HTTPError as exc:
                error = openai_error(exc.message, "invalid_request_error")
                await self._send(stream, exc.status, error, _JSON, keep_alive=False)
                await _close_gracefully(stream)
                return
            if request is None:
                return
            after = await self._respond(stream, request)
            if after == "keep-alive":
                continue
            if after == "close":
                await _close_gracefully(stream)
            elif after == "reset":
                _linger_zero(stream.extra(SocketAttribute.raw_socket))  # noqa: S610 (not Django)
            return

    async def _respond(self, stream: SocketStream, request: Request) -> _Next:
        path, method, keep_alive = request.path, request.method, request.keep_alive
        if path == _SPEECH_PATH:
            if method != "POST":
                return await self._method_not_allowed(stream, "POST", keep_alive)
            return await self._speech(stream, request)
        if path in ("/v1/models", "/health"):
            if method != "GET":
                return await self._method_not_allowed(stream, "GET", keep_alive)
            fault = self._current_fault(consume=False)
            if isinstance(fault, (Refuse, Reset)):
                return "reset"
            if isinstance(fault, Hang):
                await _wait_until_peer_leaves(stream)
                return "gone"
            if path == "/health":
                body = json.dumps({"status": "healthy"}).encode()
            else:
                model = {"id": self.model, "object": "model", "created": 0, "owned_by": self.name}
                body = json.dumps({"object": "list", "data": [model]}).encode()
            return await self._send(stream, 200, body, _JSON, keep_alive=keep_alive)
        error = openai_error(f"Invalid URL ({method} {path})", "invalid_request_error")
        return await self._send(stream, 404, error, _JSON, keep_alive=keep_alive)

    async def _method_not_allowed(self, stream: SocketStream, allow: str, keep: bool) -> _Next:
        error = openai_error("Method Not Allowed", "invalid_request_error")
        return await self._send(
            stream, 405, error, _JSON, keep_alive=keep, headers=[("Allow", allow)]
        )

    async def _speech(self, stream: SocketStream, request: Request) -> _Next:
        self._hits += 1
        params = _json_object(request.body)
        self._requests.append(
            RecordedRequest(
                authorization=request.headers.get("authorization"),
                params={} if params is None else params,
                headers=request.headers,
                time=anyio.current_time(),
                body=request.body,
            )
        )
        keep_alive = request.keep_alive
        fault = self._current_fault(consume=True)
        if isinstance(fault, (Refuse, Reset)):
            return "reset"
        if isinstance(fault, Hang):
            await _wait_until_peer_leaves(stream)
            return "gone"
        if isinstance(fault, SlowFirstByte):
            await anyio.sleep(fault.seconds)
        if isinstance(fault, Status):
            return await self._send_status(stream, fault, keep_alive)
        if isinstance(fault, UnsupportedVoice):
            voice = params.get("voice") if params else None
            error = unknown_voice(voice, self.voices)
            return await self._send(stream, 400, error, _JSON, keep_alive)
        if isinstance(fault, UnsupportedFormat):
            wanted = params.get("response_format") if params else None
            others = [f for f in self.formats if f != wanted] or ["wav"]
            error = unsupported_format(wanted, others)
            return await self._send(stream, 400, error, _JSON, keep_alive)
        if isinstance(fault, NotAudio):
            body, content_type = not_audio(fault.kind)
            content_type = fault.content_type or content_type
            return await self._send(stream, 200, body, content_type, keep_alive)
        problem = validate_speech(
            params,
            formats=self.formats,
            voices=self.voices,
            max_input_chars=self.max_input_chars,
        )
        if problem is not None:
            return await self._send(stream, 400, problem, _JSON, keep_alive)
        assert params is not None
        asked = params.get("response_format") or "mp3"
        actual = fault.actual if isinstance(fault, WrongFormat) else asked
        content_type = CONTENT_TYPES[actual]
        if isinstance(fault, WrongFormat) and fault.content_type is not None:
            content_type = fault.content_type
        mp4 = isinstance(fault, WrongFormat) and fault.mp4
        audio = self._audio(actual, params["input"], mp4=mp4)
        if isinstance(fault, Truncated):
            audio = audio[: fault.after_bytes]
        if params.get("stream_format") == "sse":
            # As OpenAI answers it: the audio, base64, in server-sent events.
            audio, content_type = speech_events(audio), "text/event-stream"
        return await self._send_audio(stream, audio, content_type, fault, keep_alive)

    def _current_fault(self, *, consume: bool) -> Fault:
        return resolve(self._fault, self._clock, anyio.current_time(), consume=consume)

    # Writing responses.

    async def _send(
        self,
        stream: SocketStream,
        status: int,
        body: bytes,
        content_type: str,
        keep_alive: bool,
        *,
        headers: Iterable[tuple[str, str]] = (),
    ) -> _Next:
        head = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        head += self._common_headers(keep_alive)
        head += headers
        await stream.send(response_head(status, head) + body)
        return "keep-alive" if keep_alive else "close"

    async def _send_status(self, stream: SocketStream, fault: Status, keep_alive: bool) -> _Next:
        headers: list[tuple[str, str]] = []
        if fault.retry_after is not None:
            if fault.retry_after_date:
                # RFC 9110 section 10.2.3: Retry-After is delay-seconds or an HTTP-date.
                # Wall-clock based: a MockClock does not move it.
                value = http_date(time.time() + math.ceil(fault.retry_after))
            else:
                value = _number(fault.retry_after)
            headers.append(("Retry-After", value))
        if fault.retry_after_ms is not None:
            headers.append(("retry-after-ms", _number(fault.retry_after_ms)))
        return await self._send(
            stream, fault.code, fault.body, fault.content_type, keep_alive, headers=headers
        )

    async def _send_audio(
        self, stream: SocketStream, audio: bytes, content_type: str, fault: Fault, keep: bool
    ) -> _Next:
        framing = (
            ("Transfer-Encoding", "chunked")
            if self.chunked
            else ("Content-Length", str(len(audio)))
        )
        head = response_head(
            200, [("Content-Type", content_type), framing, *self._common_headers(keep)]
        )
        stop = fault.after_bytes if isinstance(fault, (Stall, Cut)) else len(audio)
        stop = min(stop, len(audio))
        piece = max(1, math.ceil(len(audio) / 4))  # several chunks, like a streaming server
        await self._send_body(stream, head, audio[:stop], piece, last=stop == len(audio))
        if isinstance(fault, Cut):
            return "close"
        if isinstance(fault, Stall):
            if fault.seconds is None:
                await _wait_until_peer_leaves(stream)
                return "gone"
            await anyio.sleep(fault.seconds)
            await self._send_body(stream, b"", audio[stop:], piece, last=True)
        return "keep-alive" if keep else "close"

    async def _send_body(
        self, stream: SocketStream, head: bytes, body: bytes, piece: int, *, last: bool
    ) -> None:
        if not self.chunked:
            if head or body:
                await stream.send(head + body)
            return
        pending = head
        for start in range(0, len(body), piece):
            await stream.send(pending + chunk(body[start : start + piece]))
            pending = b""
        if last:
            pending += chunk(b"")
        if pending:
            await stream.send(pending)

    def _common_headers(self, keep_alive: bool) -> list[tuple[str, str]]:
        headers = [
            ("Server", "resilient-tts-testing"),
            ("X-Request-Id", f"req_{next(self._request_ids)}"),
        ]
        if not keep_alive:
            headers.append(("Connection", "close"))
        return headers


def loopback_host(host: str) -> str:
    """`host` as an IP address if it is a loopback one (localhost -> 127.0.0.1), else ValueError."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"host must be a loopback IP address such as 127.0.0.1 or ::1, got {host!r}"
        ) from None
    if not address.is_loopback:
        raise ValueError(
            f"refusing to listen on {host!r}: the fake server binds loopback addresses only "
            "(127.0.0.0/8 or ::1), so it is never reachable from other machines"
        )
    return str(address)


@contextlib.asynccontextmanager
async def serve_pool(
    servers: int | Iterable[FakeSpeechServer],
) -> AsyncIterator[list[FakeSpeechServer]]:
    """Run several servers at once: ``serve_pool(3)`` (named server-0..2) or a list of them."""
    pool = (
        [FakeSpeechServer(name=f"server-{i}") for i in range(servers)]
        if isinstance(servers, int)
        else list(servers)
    )
    async with contextlib.AsyncExitStack() as stack:
        for server in pool:
            await stack.enter_async_context(server)
        yield pool


def _linger_zero(sock: socket.socket) -> None:
    """Make the coming close send RST instead of FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)


async def _close_gracefully(stream: SocketStream) -> None:
    """Half-close, then let the client read everything and close first (RFC 9112 9.6)."""
    with anyio.move_on_after(_LINGER_SECONDS):
        await stream.send_eof()
        await _wait_until_peer_leaves(stream)


async def _wait_until_peer_leaves(stream: SocketStream) -> None:
    """Read and drop whatever arrives until the client closes the connection."""
    with contextlib.suppress(*_PEER_GONE):
        while True:
            await stream.receive()


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
