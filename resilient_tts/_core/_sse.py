"""Server-sent events, and the speech events OpenAI sends with ``stream_format="sse"``.

Pure, no I/O: bytes in, events out, chunk boundaries anywhere (even inside a UTF-8 character
or between CR and LF). The parser follows the WHATWG HTML event-stream rules (section 9.2.6):
lines end with CRLF, LF or CR; ``data:`` lines accumulate; a blank line dispatches; lines
starting with ``:`` are comments; one leading space after the colon is dropped.

OpenAI's speech stream (``POST /v1/audio/speech`` with ``stream_format="sse"``)::

    data: {"type": "speech.audio.delta", "audio": "<base64 of response_format bytes>"}

    data: {"type": "speech.audio.done", "usage": {...}}

    parser = SseParser()
    for event in parser.feed(chunk):
        match speech_event(event):
            case AudioDelta(audio=audio): ...
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

__all__ = [
    "AudioDelta",
    "AudioDone",
    "ServerSentEvent",
    "SpeechStreamError",
    "SseParser",
    "speech_event",
]

# An event this large is not speech audio any server sends; stop before memory runs out.
MAX_EVENT_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    event: str  # "message" when the stream names none
    data: str
    id: str | None = None


class SseParser:
    """Turns event-stream bytes into `ServerSentEvent`s, as they arrive.

    An event still open when the stream ends is dropped, as WHATWG says: a server that dies
    mid-event has not sent it.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._skip_lf = False  # the last chunk ended with CR: a LF starting the next is its pair
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._data_size = 0  # characters of data gathered for the pending event

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """The events completed by `chunk`. Raises `ValueError` on an oversized event."""
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._skip_lf = False
        data = self._buffer + chunk
        events: list[ServerSentEvent] = []
        start = 0
        while True:
            cr = data.find(b"\r", start)
            lf = data.find(b"\n", start)
            if cr < 0 and lf < 0:
                break
            if cr < 0 or (0 <= lf < cr):
                end, after = lf, lf + 1
            elif cr + 1 < len(data):
                end, after = cr, cr + 2 if data[cr + 1 : cr + 2] == b"\n" else cr + 1
            else:  # CR at the very end: a LF may follow in the next chunk
                end, after = cr, cr + 1
                self._skip_lf = True
            event = self._line(data[start:end].decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)
            start = after
        self._buffer = data[start:]
        if self._data_size + len(self._buffer) > MAX_EVENT_BYTES:
            raise ValueError(f"a server-sent event exceeds {MAX_EVENT_BYTES} bytes")
        return events

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._data_size += len(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        return None  # "retry" and unknown fields are ignored

    def _dispatch(self) -> ServerSentEvent | None:
        data, event = self._data, self._event
        self._data, self._event, self._data_size = [], "", 0
        if not data:
            return None
        return ServerSentEvent(event or "message", "\n".join(data), self._id)


@dataclass(frozen=True, slots=True)
class AudioDelta:
    audio: bytes


@dataclass(frozen=True, slots=True)
class AudioDone:
    pass


@dataclass(frozen=True, slots=True)
class SpeechStreamError:
    message: str


def speech_event(event: ServerSentEvent) -> AudioDelta | AudioDone | SpeechStreamError | None:
    """What one event means for the audio; None for events that carry none (keep-alives,
    unknown types). The type comes from the JSON ``type`` field, else the ``event:`` name."""
    try:
        payload = json.loads(event.data)
    except ValueError:
        if event.data.strip() == "[DONE]":  # the chat-completions convention, just in case
            return AudioDone()
        return SpeechStreamError(f"event data is not JSON: {event.data[:80]!r}")
    if not isinstance(payload, dict):
        return SpeechStreamError(f"event data is not a JSON object: {event.data[:80]!r}")
    kind = payload.get("type") if isinstance(payload.get("type"), str) else event.event
    if kind == "speech.audio.delta":
        audio = payload.get("audio")
        if not isinstance(audio, str):
            return SpeechStreamError("speech.audio.delta without a base64 'audio' string")
        try:
            return AudioDelta(base64.b64decode(audio, validate=True))
        except (binascii.Error, ValueError):
            return SpeechStreamError("speech.audio.delta whose 'audio' is not valid base64")
    if kind == "speech.audio.done":
        return AudioDone()
    if kind == "error" or "error" in payload:
        error = payload.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        return SpeechStreamError(str(message or payload)[:300])
    return None
