"""RIFF WAVE in plain Python: read any PCM WAV a TTS server sends, write the canonical header."""

from __future__ import annotations

import struct
import sys
from array import array
from dataclasses import dataclass

from .._exceptions import AudioError
from ._types import PcmAudio

__all__ = [
    "STREAMING_SIZE",
    "UnsupportedWavEncodingError",
    "WavInfo",
    "parse_wav",
    "parse_wav_header",
    "wav_header",
    "write_wav",
]

# OpenAI streams WAV before it knows the length and writes this in both size fields; servers
# that stream through soundfile or ffmpeg write 0 instead. Both mean "to the end of the body".
STREAMING_SIZE = 0xFFFF_FFFF

_PCM = 0x0001
_IEEE_FLOAT = 0x0003
_EXTENSIBLE = 0xFFFE  # the real tag is the first two bytes of the SubFormat GUID
_INT_BITS = (8, 16, 24, 32)
# Beyond these a header is garbage, not audio (swresample mixes at most 64 channels).
_MAX_CHANNELS = 64
_MAX_RATE = 1_000_000
_FLOAT_BITS = (32, 64)


class UnsupportedWavEncodingError(AudioError):
    """A well-formed WAV whose samples are not plain PCM (mu-law, ADPCM, mp3-in-WAV, ...).

    Such a body is still audio: it is handed to the FFmpeg decoder instead.
    """


@dataclass(frozen=True, slots=True)
class WavInfo:
    """The facts a WAV header states, and where its samples are in the body."""

    sample_rate: int
    channels: int
    bits_per_sample: int  # the container size of one sample: 24-in-32 counts as 32
    is_float: bool
    data_offset: int
    data_length: int  # whole frames only
    streaming: bool  # the sizes said "unknown" (0 or 0xFFFFFFFF); the data ran to the end

    @property
    def block_align(self) -> int:
        return self.channels * self.bits_per_sample // 8

    @property
    def is_s16(self) -> bool:
        """True when the data chunk already is s16le: usable without any conversion."""
        return not self.is_float and self.bits_per_sample == 16


def parse_wav(data: bytes) -> PcmAudio:
    """The samples of a WAV body as s16le, interleaved as they were.

    Raises `AudioError` when `data` is not a usable WAV (and `UnsupportedWavEncodingError`,
    a subclass, when it is a WAV of compressed samples).
    """
    info = parse_wav_header(data)
    raw = data[info.data_offset : info.data_offset + info.data_length]
    return PcmAudio(
        samples=_to_s16(raw, info), sample_rate=info.sample_rate, channels=info.channels
    )


def parse_wav_header(data: bytes) -> WavInfo:
    """Walk the RIFF chunks of `data` to its ``fmt `` and ``data`` chunks.

    LIST, fact, cue and any other chunks are skipped (each padded to an even size, as RIFF
    requires); RF64's ``ds64`` chunk supplies the 64-bit data size.
    """
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RF64", b"BW64") or data[8:12] != b"WAVE":
        raise AudioError("body is not a WAV file: it does not start with a RIFF/WAVE header")
    fmt: tuple[int, int, int, bool] | None = None
    data_start = data_size = -1
    ds64_size = -1
    pos = 12
    while pos + 8 <= len(data) and (fmt is None or data_start < 0):
        chunk_id = data[pos : pos + 4]
        (size,) = struct.unpack_from("<I", data, pos + 4)
        body = pos + 8
        if chunk_id == b"data":
            data_start, data_size = body, size
            if size in (0, STREAMING_SIZE) and ds64_size >= 0:
                data_size = ds64_size
            if data_size in (0, STREAMING_SIZE) or fmt is None:
                break  # the samples run to the end of the body: no chunk can follow
        elif size == STREAMING_SIZE:
            raise AudioError(f"WAV chunk {chunk_id!r} claims an unknown size; body is corrupt")
        elif chunk_id == b"fmt ":
            fmt = _parse_fmt(data[body : body + size])
        elif chunk_id == b"ds64" and size >= 16 and len(data) >= body + 16:
            (ds64_size,) = struct.unpack_from("<Q", data, body + 8)
        pos = body + size + (size & 1)
    if fmt is None:
        raise AudioError("WAV body has no 'fmt ' chunk before its samples")
    if data_start < 0:
        raise AudioError("WAV body has no 'data' chunk: it holds no samples")
    rate, channels, bits, is_float = fmt
    available = len(data) - data_start
    streaming = data_size in (0, STREAMING_SIZE) or data_size > 0xFFFF_FFF0
    if streaming:
        data_size = available
    elif data_size > available:
        raise AudioError(
            f"WAV body is cut short: its data chunk declares {data_size} bytes but only "
            f"{available} arrived"
        )
    block = channels * bits // 8
    return WavInfo(
        sample_rate=rate,
        channels=channels,
        bits_per_sample=bits,
        is_float=is_float,
        data_offset=data_start,
        data_length=data_size - data_size % block,
        streaming=streaming,
    )


def _parse_fmt(chunk: bytes) -> tuple[int, int, int, bool]:
    """(sample rate, channels, bits per sample, is float) from a ``fmt `` chunk."""
    if len(chunk) < 16:
        raise AudioError(f"WAV 'fmt ' chunk is {len(chunk)} bytes; it needs at least 16")
    tag, channels, rate, _byte_rate, _block_align, bits = struct.unpack_from("<HHIIHH", chunk)
    if tag == _EXTENSIBLE:
        if len(chunk) < 26:
            raise AudioError("WAVE_FORMAT_EXTENSIBLE 'fmt ' chunk is too short for its SubFormat")
        (tag,) = struct.unpack_from("<H", chunk, 24)
    if tag not in (_PCM, _IEEE_FLOAT):
        raise UnsupportedWavEncodingError(f"WAV holds encoded samples (format tag {tag:#06x})")
    is_float = tag == _IEEE_FLOAT
    if bits not in (_FLOAT_BITS if is_float else _INT_BITS):
        kind = "float" if is_float else "integer"
        raise AudioError(f"WAV has {bits}-bit {kind} samples; resilient_tts cannot read those")
    if not (0 < channels <= _MAX_CHANNELS and 0 < rate <= _MAX_RATE):
        raise AudioError(f"WAV header is corrupt: {channels} channels at {rate} Hz")
    return rate, channels, bits, is_float


_FLIP_SIGN = bytes(b ^ 0x80 for b in range(256))


def _to_s16(raw: bytes, info: WavInfo) -> bytes:
    """Integer widths by byte slicing (keep the two most significant bytes), floats by scaling."""
    if info.is_float:
        return _float_to_s16(raw, "f" if info.bits_per_sample == 32 else "d")
    width = info.bits_per_sample // 8
    if width == 2:
        return raw
    out = bytearray(len(raw) // width * 2)
    if width == 1:  # 8-bit WAV is unsigned: flipping the top bit makes it signed
        out[1::2] = raw.translate(_FLIP_SIGN)
    else:
        out[0::2] = raw[width - 2 :: width]
        out[1::2] = raw[width - 1 :: width]
    return bytes(out)


def _float_to_s16(raw: bytes, typecode: str) -> bytes:
    floats = array(typecode)
    floats.frombytes(raw)
    if sys.byteorder == "big":
        floats.byteswap()
    # Out-of-range values clip; NaN (which fails every comparison) becomes silence.
    ints = array(
        "h",
        [
            int(x * 32768.0) if -1.0 <= x < 1.0 else 32767 if x > 0 else -32768 if x < 0 else 0
            for x in floats
        ],
    )
    if sys.byteorder == "big":
        ints.byteswap()
    return ints.tobytes()


def wav_header(sample_rate: int, channels: int = 1, data_length: int | None = None) -> bytes:
    """A canonical 44-byte s16le WAV header.

    With ``data_length=None`` both sizes are 0xFFFFFFFF, as OpenAI writes when it streams.
    """
    if data_length is None or data_length > STREAMING_SIZE - 36:
        riff_size = data_size = STREAMING_SIZE
    else:
        riff_size, data_size = 36 + data_length, data_length
    block_align = 2 * channels
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        riff_size,
        b"WAVE",
        b"fmt ",
        16,
        _PCM,
        channels,
        sample_rate,
        sample_rate * block_align,
        block_align,
        16,
        b"data",
        data_size,
    )


def write_wav(pcm: PcmAudio) -> bytes:
    """`pcm` as a complete WAV file with its exact sizes."""
    return wav_header(pcm.sample_rate, pcm.channels, len(pcm.samples)) + pcm.samples
