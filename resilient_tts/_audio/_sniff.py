"""Tell what a body holds from its bytes, never from the server's label (SPEC §6).

Servers mislabel: LocalAI sends WAV when asked for pcm, Kokoros sends mp3 for aac and flac,
openai-edge-tts wraps aac in MP4. Every check here reads a few header bytes and never raises,
whatever the input. Raw PCM has no header, so it cannot be sniffed: it is "PCM as declared".
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from ._formats import AudioFormat

__all__ = [
    "AdtsFrameHeader",
    "Container",
    "Mp3FrameHeader",
    "adts_frame_header",
    "id3_end",
    "looks_like_text_error",
    "mp3_frame_header",
    "sniff",
    "sniff_container",
]


class Container(enum.Enum):
    """How the bytes are wrapped: finer than `AudioFormat`, because AAC comes in two boxes."""

    MP3 = "mp3"
    ADTS = "adts"  # raw AAC frames, what OpenAI sends for "aac"
    MP4 = "mp4"  # an ISO-BMFF (M4A) file, what openai-edge-tts sends for "aac"
    OGG_OPUS = "ogg_opus"
    OGG = "ogg"  # Ogg holding something else (Vorbis, Speex, FLAC): decodable, not one of ours
    FLAC = "flac"
    WAV = "wav"

    @property
    def audio_format(self) -> AudioFormat | None:
        return _FORMAT_OF.get(self)


_FORMAT_OF: dict[Container, AudioFormat] = {
    Container.MP3: AudioFormat.MP3,
    Container.ADTS: AudioFormat.AAC,
    Container.MP4: AudioFormat.AAC,
    Container.OGG_OPUS: AudioFormat.OPUS,
    Container.FLAC: AudioFormat.FLAC,
    Container.WAV: AudioFormat.WAV,
}


def sniff(data: bytes) -> AudioFormat | None:
    """The format `data` really is, or None for anything else (JSON, HTML, empty, raw PCM)."""
    container = sniff_container(data)
    return None if container is None else container.audio_format


def sniff_container(data: bytes) -> Container | None:
    """The container `data` starts with, or None when no known audio header is there."""
    start = id3_end(data)
    head = data[start : start + 12]
    if head[:4] == b"fLaC":
        return Container.FLAC
    if start == 0:  # these containers never carry an ID3v2 tag in front
        if head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":
            return Container.WAV
        if head[4:8] == b"ftyp":
            return Container.MP4
        if head[:4] == b"OggS":
            is_opus = _ogg_first_packet(data)[:8] == b"OpusHead"
            return Container.OGG_OPUS if is_opus else Container.OGG
    # Both frame syncs start 0xFF 0xE/0xF; the two layer bits tell them apart: 01 is
    # MPEG Layer III, 00 (reserved in MPEG audio) is ADTS. A sync can occur by chance in
    # other bytes; a second frame header right where the first frame ends cannot.
    adts = adts_frame_header(data, start)
    if adts is not None and _frame_or_end(data, start + adts.frame_length, adts_frame_header):
        return Container.ADTS
    mp3 = mp3_frame_header(data, start)
    if mp3 is not None and _frame_or_end(data, start + mp3.frame_length, mp3_frame_header):
        return Container.MP3
    return None


def id3_end(data: bytes) -> int:
    """Offset just past any ID3v2 tags (and the zero padding some taggers leave after them)."""
    pos = 0
    while data[pos : pos + 3] == b"ID3" and len(data) >= pos + 10:
        size_bytes = data[pos + 6 : pos + 10]
        if any(b & 0x80 for b in size_bytes):  # sizes are "syncsafe": 7 bits per byte
            return pos
        size = 0
        for b in size_bytes:
            size = (size << 7) | b
        footer = 10 if data[pos + 5] & 0x10 else 0
        pos += 10 + size + footer
    while pos < len(data) and data[pos] == 0 and pos > 0:
        pos += 1
    return pos


class Mp3FrameHeader:
    """The four bytes in front of every MPEG Layer III frame."""

    __slots__ = ("channels", "frame_length", "mpeg1", "sample_rate", "samples")

    def __init__(self, *, mpeg1: bool, sample_rate: int, channels: int, frame_length: int) -> None:
        self.mpeg1 = mpeg1
        self.sample_rate = sample_rate
        self.channels = channels
        self.frame_length = frame_length
        self.samples = 1152 if mpeg1 else 576


_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_MP3_KBPS_V1 = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
_MP3_KBPS_V2 = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)


def mp3_frame_header(data: bytes, pos: int) -> Mp3FrameHeader | None:
    """The Layer III frame header at `pos`, or None if there is none (or it is free-format)."""
    h = data[pos : pos + 4]
    if len(h) < 4 or h[0] != 0xFF or h[1] & 0xE0 != 0xE0:
        return None
    version = (h[1] >> 3) & 3  # 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5, 1: reserved
    layer = (h[1] >> 1) & 3
    bitrate_index = h[2] >> 4
    rate_index = (h[2] >> 2) & 3
    if version == 1 or layer != 1 or bitrate_index in (0, 15) or rate_index == 3:
        return None
    mpeg1 = version == 3
    rate = _MP3_RATES[version][rate_index]
    kbps = (_MP3_KBPS_V1 if mpeg1 else _MP3_KBPS_V2)[bitrate_index]
    padding = (h[2] >> 1) & 1
    length = (144 if mpeg1 else 72) * kbps * 1000 // rate + padding
    channels = 1 if h[3] >> 6 == 3 else 2
    return Mp3FrameHeader(mpeg1=mpeg1, sample_rate=rate, channels=channels, frame_length=length)


class AdtsFrameHeader:
    """The 7-byte header in front of every ADTS frame (ISO/IEC 14496-3, 1.A.2.2)."""

    __slots__ = ("channels", "frame_length", "sample_rate", "samples")

    def __init__(self, *, sample_rate: int, channels: int, frame_length: int, samples: int) -> None:
        self.sample_rate = sample_rate
        self.channels = channels  # 0: the layout is in a program config element, not here
        self.frame_length = frame_length
        self.samples = samples


_ADTS_RATES = (
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350
)  # fmt: skip


def adts_frame_header(data: bytes, pos: int) -> AdtsFrameHeader | None:
    """The ADTS header at `pos`, or None if there is none."""
    h = data[pos : pos + 7]
    if len(h) < 7 or h[0] != 0xFF or h[1] & 0xF6 != 0xF0:  # 12-bit sync, layer 00
        return None
    rate_index = (h[2] >> 2) & 0xF
    length = ((h[3] & 3) << 11) | (h[4] << 3) | (h[5] >> 5)
    header_length = 7 if h[1] & 1 else 9
    if rate_index >= len(_ADTS_RATES) or length <= header_length:
        return None
    channels = ((h[2] & 1) << 2) | (h[3] >> 6)
    blocks = (h[6] & 3) + 1
    return AdtsFrameHeader(
        sample_rate=_ADTS_RATES[rate_index],
        channels=channels,
        frame_length=length,
        samples=1024 * blocks,
    )


def _frame_or_end(data: bytes, pos: int, header_at: Callable[[bytes, int], object]) -> bool:
    """True when another frame header starts at `pos`, or the body (nearly) ends there."""
    return pos + 7 > len(data) or header_at(data, pos) is not None


def _ogg_first_packet(data: bytes) -> bytes:
    """The start of the first packet of the first Ogg page (RFC 3533 §6)."""
    segments = data[26] if len(data) > 26 else 0
    start = 27 + segments
    return data[start : start + 8]


def looks_like_text_error(data: bytes) -> bool:
    """True when `data` reads as text (a JSON, HTML or plain-text error), not audio.

    Kokoro-FastAPI sends ``{"detail": ...}``, proxies send HTML pages, some servers a bare
    "Internal Server Error", all with status 200 at times. Audio, even raw PCM, is never
    entirely printable text over its first few hundred bytes.
    """
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n")
    if not head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.reason != "unexpected end of data":  # not just a character cut by the window
            return False
        text = head[: exc.start].decode("utf-8")
    return all(c.isprintable() or c in "\t\r\n" for c in text)
