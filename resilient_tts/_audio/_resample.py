"""Resample and downmix s16 PCM through FFmpeg's swresample (via PyAV).

Every path goes through here, PCM and WAV inputs too, so a rate change is always a real
band-limited filter: naive interpolation would fold everything above the new Nyquist
frequency back into the audible band.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction

import av

from .._exceptions import AudioError
from ._types import PcmAudio

__all__ = ["MonoResampler", "pcm_frame", "to_mono"]

# PyAV raises av.error.FFmpegError subclasses (an input cut short gives its EOFError), a
# plain ValueError for frames it refuses, OverflowError for numbers too big for C.
FFMPEG_ERRORS: tuple[type[BaseException], ...] = (
    av.error.FFmpegError,
    EOFError,
    ValueError,
    OverflowError,
)


def _layout(channels: int) -> str:
    # "Nc" names FFmpeg's default layout for N channels ("6c" is 5.1), so swresample knows
    # which channel is which and can build its downmix matrix.
    return {1: "mono", 2: "stereo"}.get(channels, f"{channels}c")


def pcm_frame(samples: bytes, sample_rate: int, channels: int = 1, pts: int = 0) -> av.AudioFrame:
    """An `av.AudioFrame` holding interleaved s16le `samples` (copied once, no numpy)."""
    frame = av.AudioFrame(
        format="s16", layout=_layout(channels), samples=len(samples) // (2 * channels)
    )
    frame.planes[0].update(samples)
    frame.sample_rate = sample_rate
    frame.pts = pts
    frame.time_base = Fraction(1, sample_rate)
    return frame


class MonoResampler:
    """Turns decoded frames of any format, layout and rate into s16 mono bytes at `rate`.

    A stream may change its layout or rate midway (an mp3 that switches channel mode);
    PyAV's resampler refuses that, so the old one is flushed and a new one started.
    """

    def __init__(self, rate: int) -> None:
        self._rate = rate
        self._resampler: av.AudioResampler | None = None
        self._source: tuple[str, str, int] | None = None
        self._out = bytearray()

    def feed(self, frame: av.AudioFrame) -> None:
        """Convert one decoded frame; its samples join the output."""
        source = (frame.format.name, frame.layout.name, frame.sample_rate)
        if self._resampler is None or source != self._source:
            self._drain()
            self._source = source
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=self._rate)
        # Gaps in the source's timestamps are not ours to fill; let swresample run on.
        frame.pts = None
        self._collect(self._resampler.resample(frame))

    def finish(self) -> PcmAudio:
        """Flush swresample's filter delay; everything fed, as one mono clip."""
        self._drain()
        return PcmAudio(samples=bytes(self._out), sample_rate=self._rate)

    def _drain(self) -> None:
        if self._resampler is not None:
            self._collect(self._resampler.resample(None))
            self._resampler = None

    def _collect(self, frames: Iterable[av.AudioFrame | None]) -> None:
        for out in frames:
            if out is None:  # a pass-through resampler answers a flush with [None]
                continue
            self._out += memoryview(out.planes[0])[: out.samples * 2]


def to_mono(pcm: PcmAudio, rate: int) -> PcmAudio:
    """`pcm` as mono at `rate`; the same object when it already is."""
    if pcm.channels == 1 and pcm.sample_rate == rate:
        return pcm
    if not pcm.samples:
        return PcmAudio(samples=b"", sample_rate=rate)
    resampler = MonoResampler(rate)
    try:
        resampler.feed(pcm_frame(pcm.samples, pcm.sample_rate, pcm.channels))
        return resampler.finish()
    except FFMPEG_ERRORS as exc:
        raise AudioError(
            f"cannot convert {pcm.channels}-channel audio at {pcm.sample_rate} Hz to mono at "
            f"{rate} Hz: {exc}"
        ) from exc
