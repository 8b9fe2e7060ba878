"""The values the audio layer hands around: decoded PCM, a probe result, a normalized clip."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from ._formats import AudioFormat

__all__ = ["NormalizedAudio", "PcmAudio", "ProbeResult"]


@dataclass(frozen=True, slots=True)
class PcmAudio:
    """Signed 16-bit little-endian samples, interleaved when there is more than one channel.

    ``PcmAudio(samples=bytes(48000), sample_rate=24000)`` is one second of mono silence.
    """

    samples: bytes
    sample_rate: int
    channels: int = 1

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.channels <= 0:
            raise ValueError(
                f"sample_rate and channels must be positive, got {self.sample_rate}, "
                f"{self.channels}"
            )
        if len(self.samples) % (2 * self.channels):
            raise ValueError(
                f"{len(self.samples)} bytes is not a whole number of {self.channels}-channel "
                "s16 frames"
            )

    @property
    def frames(self) -> int:
        """Samples per channel."""
        return len(self.samples) // (2 * self.channels)

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return self.frames / self.sample_rate


class ProbeResult(NamedTuple):
    """What a body holds, read from its bytes.

    `duration` is exact for wav, pcm, flac and opus; for mp3 and aac it counts whole codec
    frames, so it may include the encoder's priming and padding (at most ~2 frames).
    """

    format: AudioFormat
    sample_rate: int
    channels: int
    duration: float


@dataclass(frozen=True, slots=True)
class NormalizedAudio:
    """Audio in exactly the format and rate the caller asked for, and how it got there.

    `transcoded` is False when `content` is the server's body itself (nothing needed to
    change), True when it was decoded, converted or re-wrapped. `source_format` and
    `source_rate` are what the bytes really were, whatever the server's label said (for opus,
    `source_rate` is the input rate its OpusHead records). `sample_rate` is the rate written,
    which differs from the requested one only where the format forbids it (see
    `encodable_rate`). `notes` say in words what was not as asked and what was done about it
    (``"transcoded wav 22050 Hz -> mp3 24000 Hz"``); empty for a clean pass-through.
    """

    content: bytes
    format: AudioFormat
    sample_rate: int
    duration: float
    source_format: AudioFormat
    source_rate: int
    transcoded: bool
    notes: tuple[str, ...] = ()
