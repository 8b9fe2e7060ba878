"""The audio a fake server sends: a tone or a given clip, as raw PCM, WAV, or encoded by PyAV.

PCM and WAV are written in plain Python. mp3, opus, aac and flac go through PyAV's bundled
FFmpeg. Every clip is cached per (format, samples, sample rate), so benchmarks measure the
client and the network rather than the encoder.
"""

from __future__ import annotations

import array
import functools
import io
import math
import struct
import sys

import av

FORMATS: tuple[str, ...] = ("mp3", "opus", "aac", "flac", "wav", "pcm")
"""Every `response_format` of OpenAI's speech endpoint."""

CONTENT_TYPES: dict[str, str] = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
"""The Content-Type OpenAI sends with each format."""

# format -> (container, encoder)
_ENCODERS: dict[str, tuple[str, str]] = {
    "mp3": ("mp3", "libmp3lame"),
    "opus": ("ogg", "libopus"),
    "aac": ("adts", "aac"),
    "flac": ("flac", "flac"),
}
# libopus accepts only these input rates; anything else is resampled to 48 kHz.
_OPUS_RATES = frozenset({8000, 12000, 16000, 24000, 48000})


def sample_count(seconds: float, sample_rate: int) -> int:
    """Number of samples in `seconds` of audio, at least one."""
    return max(1, round(seconds * sample_rate))


@functools.lru_cache(maxsize=64)
def tone_pcm(
    samples: int, sample_rate: int, frequency: float = 440.0, amplitude: float = 0.3
) -> bytes:
    """A sine tone as 16-bit signed little-endian mono PCM."""
    step = 2 * math.pi * frequency / sample_rate
    peak = amplitude * 32767
    data = array.array("h", [round(peak * math.sin(step * i)) for i in range(samples)])
    if sys.byteorder == "big":
        data.byteswap()
    return data.tobytes()


def wav_bytes(pcm: bytes, sample_rate: int, channels: int = 1) -> bytes:
    """Wrap s16le PCM in a RIFF/WAVE header with exact chunk sizes."""
    block_align = channels * 2
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + len(pcm),
        b"WAVE",
        b"fmt ",
        16,  # size of the PCM fmt chunk
        1,  # WAVE_FORMAT_PCM
        channels,
        sample_rate,
        sample_rate * block_align,
        block_align,
        16,  # bits per sample
        b"data",
        len(pcm),
    )
    return header + pcm


def encode(pcm: bytes, sample_rate: int, response_format: str, *, mp4: bool = False) -> bytes:
    """Encode s16le mono PCM into `response_format` (one of `FORMATS`).

    ``mp4=True`` writes aac inside an MP4 (M4A) file instead of raw ADTS frames, as
    openai-edge-tts does.
    """
    if response_format == "pcm":
        return pcm
    if response_format == "wav":
        return wav_bytes(pcm, sample_rate)
    container_format, codec = _ENCODERS[response_format]
    if mp4:
        if response_format != "aac":
            raise ValueError(f"only aac comes in MP4, not {response_format!r}")
        container_format = "mp4"  # BytesIO is seekable, so the muxer can write its index
    rate = sample_rate
    if codec == "libopus" and rate not in _OPUS_RATES:
        rate = 48000
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        assert isinstance(stream, av.AudioStream)
        frame = av.AudioFrame(format="s16", layout="mono", samples=len(pcm) // 2)
        frame.planes[0].update(pcm)
        frame.sample_rate = sample_rate
        frame.pts = 0
        # PyAV converts sample format, rate and frame size to what the encoder wants.
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


@functools.lru_cache(maxsize=256)
def speech_audio(
    response_format: str, samples: int, sample_rate: int, *, mp4: bool = False
) -> bytes:
    """The cached clip the server sends: `samples` of tone in `response_format`.

    Encoding runs in the event loop on purpose: a worker thread would let trio's MockClock
    jump past client timeouts while the encoder runs, and the cache makes it a one-off cost.
    """
    return encode(tone_pcm(samples, sample_rate), sample_rate, response_format, mp4=mp4)


@functools.lru_cache(maxsize=64)
def clip_audio(response_format: str, clip: bytes, sample_rate: int, *, mp4: bool = False) -> bytes:
    """A given s16le mono `clip` (real speech, say) in `response_format`; cached like the tone."""
    return encode(clip, sample_rate, response_format, mp4=mp4)
