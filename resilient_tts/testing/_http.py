"""A minimal HTTP/1.1 server side on anyio byte streams (RFC 9112).

Enough for an OpenAI-compatible client: request line, headers, bodies framed by Content-Length
or chunked, `Expect: 100-continue`, keep-alive and pipelining. Responses are written by the
caller from `response_head` and `chunk`.
"""

from __future__ import annotations

import email.utils
import functools
import re
import time
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import urlsplit

import anyio
from anyio.abc import ByteStream

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024

# RFC 9110 section 5.6.2: a field name is a token.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class HTTPError(Exception):
    """The request is malformed; answer `status` and close the connection."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class PeerClosed(Exception):
    """The client closed the connection between requests or in the middle of one."""


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed request. Header names are lower-case; repeated fields are joined by ", "."""

    method: str
    target: str
    version: str
    headers: dict[str, str]
    body: bytes

    @property
    def path(self) -> str:
        """The target's path, without query (origin-form or absolute-form)."""
        return urlsplit(self.target).path or "/"

    @property
    def keep_alive(self) -> bool:
        """Whether the client lets the connection live on after this exchange."""
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


class RequestReader:
    """Reads requests one after another from a connection, buffering what arrives early."""

    def __init__(self, stream: ByteStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def next_request(self) -> Request | None:
        """The next request, or None when the client closed cleanly between requests."""
        head = await self._read_head()
        if head is None:
            return None
        method, target, version, headers = _parse_head(head)
        if headers.get("expect", "").lower() == "100-continue" and version == "HTTP/1.1":
            await self._stream.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await self._read_body(headers)
        return Request(method, target, version, headers, body)

    async def _fill(self) -> None:
        try:
            data = await self._stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError) as exc:
            raise PeerClosed from exc
        self._buffer += data

    async def _read_head(self) -> bytes | None:
        start = 0
        while True:
            # RFC 9112 section 2.2: ignore empty lines before the request line.
            while self._buffer[:2] == b"\r\n":
                del self._buffer[:2]
            end = self._buffer.find(b"\r\n\r\n", start)
            if end >= 0:
                head = bytes(self._buffer[:end])
                del self._buffer[: end + 4]
                return head
            if len(self._buffer) > MAX_HEAD_BYTES:
                raise HTTPError(431, "request header fields too large")
            start = max(0, len(self._buffer) - 3)
            try:
                await self._fill()
            except PeerClosed:
                if not self._buffer:
                    return None
                raise

    async def _read_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            await self._fill()
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    async def _read_line(self) -> bytes:
        while (end := self._buffer.find(b"\r\n")) < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                raise HTTPError(400, "chunk line too long")
            await self._fill()
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        return line

    async def _read_body(self, headers: dict[str, str]) -> bytes:
        transfer_encoding = headers.get("transfer-encoding")
        if transfer_encoding is not None:
            # RFC 9112 section 6.1: chunked must be the final coding; with Content-Length too
            # the message is a smuggling risk, so refuse it.
            if transfer_encoding.lower() != "chunked" or "content-length" in headers:
                raise HTTPError(501, f"unsupported Transfer-Encoding {transfer_encoding!r}")
            return await self._read_chunked()
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():
            raise HTTPError(400, "invalid Content-Length")
        length = int(length_text)
        if length > MAX_BODY_BYTES:
            raise HTTPError(413, "request body too large")
        return await self._read_exactly(length)

    async def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            size_text = (await self._read_line()).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise HTTPError(400, "invalid chunk size") from None
            if size == 0:
                while await self._read_line():  # trailer fields, ignored
                    pass
                return bytes(body)
            if len(body) + size > MAX_BODY_BYTES:
                raise HTTPError(413, "request body too large")
            body += await self._read_exactly(size)
            if await self._read_exactly(2) != b"\r\n":
                raise HTTPError(400, "chunk not followed by CRLF")


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    request_line, *field_lines = head.split(b"\r\n")
    parts = request_line.split(b" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise HTTPError(400, "malformed request line")
    method, target, version = (p.decode("latin-1") for p in parts)
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        if not version.startswith("HTTP/"):
            raise HTTPError(400, "malformed request line")
        raise HTTPError(505, f"{version} is not supported")
    headers: dict[str, str] = {}
    for line in field_lines:
        name, colon, value = line.partition(b":")
        # RFC 9112 section 5: no whitespace before the colon, no obsolete line folding.
        if not colon or not _TOKEN.fullmatch(name):
            raise HTTPError(400, "malformed header field")
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        if key in headers:
            if key == "content-length" and headers[key] != text:
                raise HTTPError(400, "conflicting Content-Length")
            if key != "content-length":
                headers[key] = f"{headers[key]}, {text}"
        else:
            headers[key] = text
    if version == "HTTP/1.1" and "host" not in headers:
        raise HTTPError(400, "missing Host header")  # RFC 9112 section 3.2
    return method, target, version, headers


def http_date(timestamp: float | None = None) -> str:
    """An IMF-fixdate (RFC 9110 section 5.6.7) for `timestamp`, by default now."""
    if timestamp is not None:
        return email.utils.formatdate(timestamp, usegmt=True)
    return _date_of_second(int(time.time()))


@functools.lru_cache(maxsize=2)
def _date_of_second(second: int) -> str:
    return email.utils.formatdate(second, usegmt=True)


def response_head(status: int, headers: list[tuple[str, str]]) -> bytes:
    """The status line and header section of a response, ready to send."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    lines = [f"HTTP/1.1 {status} {reason}", f"Date: {http_date()}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (RFC 9112 section 7.1); empty data is the last chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b"0\r\n\r\n"
