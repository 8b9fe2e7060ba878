"""The one entry point the client calls: whatever a server sent, give the caller what it asked for.

    normalize(body, declared=AudioFormat.PCM, declared_rate=22050,
              target=AudioFormat.MP3, target_rate=24000)

The label (`declared`) is only trusted for raw PCM, which has no header to sniff; everything
else is read from the bytes (SPEC §6). A body that already is the target format, rate and
mono comes back untouched (the same `bytes` object); anything else is decoded, resampled to
mono through swresample and encoded once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .._exceptions import AudioError
from ._codec import decode, decode_info, encode
from ._formats import AudioFormat, encodable_rate
from ._headers import StreamInfo, header_info
from ._resample import to_mono
from ._sniff import Container, looks_like_text_error, sniff_container
from ._types import NormalizedAudio, PcmAudio, ProbeResult
from ._wav import UnsupportedWavEncodingError, parse_wav, parse_wav_header, write_wav

__all__ = ["decode_to_pcm", "encode_pcm", "normalize", "probe"]


def normalize(
    body: bytes,
    *,
    declared: AudioFormat,
    declared_rate: int,
    target: AudioFormat,
    target_rate: int,
) -> NormalizedAudio:
    """`body` as `target`, mono, at `target_rate` (or the nearest rate `target` allows).

    `declared` is the format the server was asked for and `declared_rate` its native rate;
    both only matter when the body turns out to be headerless PCM. Raises `AudioError`
    when the body is not audio (empty, a JSON or HTML error, garbage, a cut-off container).
    """
    out_rate = encodable_rate(target, target_rate)
    source = _Source.read(body, declared, declared_rate)
    if source.is_already(target, out_rate):
        return NormalizedAudio(
            content=body,
            format=target,
            sample_rate=out_rate,
            duration=source.info.duration if source.info else source.duration(),
            source_format=source.format,
            transcoded=False,
        )
    pcm = source.decode(out_rate)
    return NormalizedAudio(
        content=_encode_mono(to_mono(pcm, out_rate), target),
        format=target,
        sample_rate=out_rate,
        duration=pcm.duration,
        source_format=source.format,
        transcoded=True,
    )


def decode_to_pcm(
    body: bytes, *, declared: AudioFormat, declared_rate: int, target_rate: int
) -> PcmAudio:
    """`body` decoded to s16 mono at `target_rate`, for joining segments before one encode.

    Same sniffing and errors as `normalize`.
    """
    source = _Source.read(body, declared, declared_rate)
    return to_mono(source.decode(target_rate), target_rate)


def encode_pcm(pcm: PcmAudio, target: AudioFormat) -> bytes:
    """`pcm` encoded once as `target`, mono, at ``encodable_rate(target, pcm.sample_rate)``."""
    return _encode_mono(to_mono(pcm, encodable_rate(target, pcm.sample_rate)), target)


def probe(
    body: bytes, *, declared: AudioFormat | None = None, declared_rate: int = 24_000
) -> ProbeResult:
    """Format, rate, channels and duration of `body`, from headers where they suffice.

    Headerless bytes are raw PCM only when ``declared=AudioFormat.PCM`` (s16le mono at
    `declared_rate`); otherwise they raise `AudioError`, as non-audio and cut-off bodies do.
    """
    if declared is None and sniff_container(body) is None:
        raise AudioError("body has no audio header; pass declared=AudioFormat.PCM for raw PCM")
    source = _Source.read(body, declared or AudioFormat.PCM, declared_rate)
    if source.container is None:
        return ProbeResult(AudioFormat.PCM, declared_rate, 1, source.duration())
    info = source.info or decode_info(body, source.container)
    return ProbeResult(source.format, info.sample_rate, info.channels, info.duration)


@dataclass(frozen=True, slots=True)
class _Source:
    """A body, what it really is, and what its headers say."""

    body: bytes
    container: Container | None  # None: headerless, so raw PCM as declared
    format: AudioFormat
    info: StreamInfo | None  # None: the headers do not say enough
    declared_rate: int

    @classmethod
    def read(cls, body: bytes, declared: AudioFormat, declared_rate: int) -> _Source:
        """Sniff `body`; raise `AudioError` when it is not audio or is cut short."""
        if declared_rate <= 0:
            raise ValueError(f"declared_rate must be positive, got {declared_rate}")
        container = sniff_container(body)
        if container is None:
            _check_raw_pcm(body, declared)
            return cls(body, None, AudioFormat.PCM, None, declared_rate)
        # An Ogg that is not Opus (Vorbis, Speex) is decodable but none of the six formats:
        # the label is the best name for it.
        fmt = container.audio_format or declared
        return cls(body, container, fmt, header_info(body, container), declared_rate)

    def duration(self) -> float:
        """Seconds of raw PCM (s16le mono at the declared rate)."""
        return len(self.body) / 2 / self.declared_rate

    def is_already(self, target: AudioFormat, rate: int) -> bool:
        """True when the body already is `target`, mono, at `rate`: known from headers alone."""
        if self.container is None:
            return target is AudioFormat.PCM and self.declared_rate == rate
        if self.format is not target or self.container is Container.MP4:
            return False  # MP4 AAC (openai-edge-tts) is not the raw ADTS callers expect
        if self.info is None or self.info.channels != 1 or self.info.sample_rate != rate:
            return False
        # Callers of "wav" get 16-bit samples, as from OpenAI; 24-bit or float WAV is converted.
        return self.container is not Container.WAV or parse_wav_header(self.body).is_s16

    def decode(self, rate: int) -> PcmAudio:
        """s16 PCM: mono at `rate` when FFmpeg decodes, as stored for WAV and raw PCM."""
        if self.container is None:
            return PcmAudio(samples=self.body, sample_rate=self.declared_rate)
        if self.container is Container.WAV:
            try:
                return parse_wav(self.body)
            except UnsupportedWavEncodingError:
                pass  # mu-law, ADPCM and friends: FFmpeg decodes them below
        return decode(self.body, self.container, rate)


def _check_raw_pcm(body: bytes, declared: AudioFormat) -> None:
    """Raise `AudioError` unless a headerless body can be the raw PCM it was asked for."""
    if not body:
        raise AudioError("body is empty: the server sent no audio")
    if looks_like_text_error(body):
        raise AudioError(f"body is a text error, not audio: {_excerpt(body)!r}")
    if declared is not AudioFormat.PCM:
        raise AudioError(
            f"body labelled {declared} has no recognisable audio header (it starts "
            f"{body[:8].hex(' ')}): it is not audio, or its start is missing"
        )
    if len(body) % 2:
        raise AudioError(
            f"raw PCM body has an odd length ({len(body)} bytes): s16le needs 2 bytes per "
            "sample, so it was cut short or is not PCM"
        )


def _encode_mono(pcm: PcmAudio, target: AudioFormat) -> bytes:
    if target is AudioFormat.PCM:
        return pcm.samples
    if target is AudioFormat.WAV:
        return write_wav(pcm)
    return encode(pcm, target)


_SECRET = re.compile(rb"(sk-[A-Za-z0-9_-]{3})[A-Za-z0-9_*-]{5,}")


def _excerpt(body: bytes) -> str:
    """The start of an error body for a message, with anything key-shaped masked."""
    return _SECRET.sub(rb"\1...", body[:160]).decode("utf-8", errors="replace").strip()
