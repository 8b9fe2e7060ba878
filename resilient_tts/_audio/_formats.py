"""The six response formats of `POST /v1/audio/speech`, and what each one allows."""

from __future__ import annotations

import enum

__all__ = [
    "AudioFormat",
    "LOSSLESS_PREFERENCE",
    "OPUS_RATES",
    "encodable_rate",
]


class AudioFormat(enum.StrEnum):
    """A `response_format`, spelled as the OpenAI API spells it: ``AudioFormat("mp3")``."""

    MP3 = "mp3"
    OPUS = "opus"
    AAC = "aac"
    FLAC = "flac"
    WAV = "wav"
    PCM = "pcm"

    @property
    def content_type(self) -> str:
        """The media type OpenAI sends for this format (``pcm`` has no registered type)."""
        return _CONTENT_TYPES[self]

    @property
    def is_lossless(self) -> bool:
        """True when a decode of this format gives back exactly the samples that went in."""
        return self in LOSSLESS_PREFERENCE


_CONTENT_TYPES: dict[AudioFormat, str] = {
    AudioFormat.MP3: "audio/mpeg",
    AudioFormat.OPUS: "audio/opus",
    AudioFormat.AAC: "audio/aac",
    AudioFormat.FLAC: "audio/flac",
    AudioFormat.WAV: "audio/wav",
    AudioFormat.PCM: "audio/pcm",
}

# What to ask a deployment for when it does not declare the requested format, best first.
# WAV carries its own rate and channel count, so a server that mislabels its rate (piper's
# 22.05 kHz, see SPEC §6) is caught, and it is read in plain Python without a decoder. Raw
# PCM is as cheap but its rate is only what the server claims. FLAC is smallest on the wire
# but needs a decode (CPU time) before it can be resampled or re-encoded.
LOSSLESS_PREFERENCE: tuple[AudioFormat, ...] = (AudioFormat.WAV, AudioFormat.PCM, AudioFormat.FLAC)

# libopus only runs at these rates; Ogg Opus always decodes at 48 kHz and records the
# encoder's input rate in its `OpusHead` (RFC 7845 §5.1).
OPUS_RATES: tuple[int, ...] = (8000, 12000, 16000, 24000, 48000)
# MPEG-1/2/2.5 Layer III sample rates (libmp3lame accepts nothing else).
_MP3_RATES: tuple[int, ...] = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
# The sampling-frequency table of an ADTS header (ISO/IEC 14496-3, 1.6.3.4).
_AAC_RATES: tuple[int, ...] = (
    7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000
)  # fmt: skip
# FLAC's STREAMINFO stores the rate in 20 bits.
_FLAC_MAX_RATE = 655_350

_CODEC_RATES: dict[AudioFormat, tuple[int, ...]] = {
    AudioFormat.OPUS: OPUS_RATES,
    AudioFormat.MP3: _MP3_RATES,
    AudioFormat.AAC: _AAC_RATES,
}


def encodable_rate(fmt: AudioFormat, rate: int) -> int:
    """The sample rate `fmt` is actually written at when `rate` is asked for.

    WAV, PCM and FLAC take any rate. The codecs take a fixed set: the nearest allowed rate at
    or above `rate` is used (so no audible band is lost), else the highest one. Opus at the
    default 24000 Hz stays at 24000 Hz; opus at 22050 Hz becomes 24000 Hz.
    """
    if rate <= 0:
        raise ValueError(f"sample rate must be positive, got {rate}")
    allowed = _CODEC_RATES.get(fmt)
    if allowed is None:
        return min(rate, _FLAC_MAX_RATE) if fmt is AudioFormat.FLAC else rate
    return min((r for r in allowed if r >= rate), default=max(allowed))
