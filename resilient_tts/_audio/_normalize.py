"""The one entry point the client calls: whatever a server sent, give the caller what it asked for.

    normalize(body, declared=AudioFormat.PCM, declared_rate=22050,
              target=AudioFormat.MP3, target_rate=24000)

The label (`declared`) is only trusted for raw PCM, which has no header to sniff; everything
else is read from the bytes (SPEC §6). A body that already is the target format, rate and
mono comes back untouched (the same `bytes` object; mono Opus at any rate, see
`_Source.is_already`); anything else is decoded, resampled to mono through swresample and
encoded once. The result's `notes` say in words what was not as asked and what was done.
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

__all__ = ["Conversion", "decode_to_pcm", "encode_pcm", "normalize", "plan", "probe"]


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
    they decide how headerless bytes are read (as raw PCM, only if `declared` is PCM), and
    a body that is something else than `declared` is noted. Raises `AudioError` when the
    body is not audio (empty, a JSON or HTML error, garbage, a cut-off container).
    """
    return plan(
        body, declared=declared, declared_rate=declared_rate, target=target, target_rate=target_rate
    ).run()


def plan(
    body: bytes,
    *,
    declared: AudioFormat,
    declared_rate: int,
    target: AudioFormat,
    target_rate: int,
) -> Conversion:
    """What `normalize` will do with `body`, from its headers alone; ``.run()`` does it.

    Cheap (a sniff and a walk over frame headers), so a caller can decide where to run the
    expensive part: ``conversion.run() if conversion.is_brief else await to_thread(...)``.
    Raises `AudioError` as `normalize` does, for whatever the headers already show.
    """
    out_rate = encodable_rate(target, target_rate)
    source = _Source.read(body, declared, declared_rate)
    passes = source.is_already(target, out_rate)
    return Conversion(source, declared, target, out_rate, passes)


# A transcode of this much audio takes a few milliseconds on one core (decode, resample and
# encode together run at 100x real time and more, see bench/audio.py): short enough to run
# on the event loop rather than pay for a worker thread.
_BRIEF_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class Conversion:
    """A body read as far as its headers, and the work that will turn it into `target`."""

    source: _Source
    declared: AudioFormat
    target: AudioFormat
    out_rate: int
    passes_through: bool

    @property
    def is_brief(self) -> bool:
        """True when `run` takes at most a few milliseconds: a pass-through, or a transcode of
        at most half a second of audio. False when the headers do not tell the length."""
        if self.passes_through:
            return True
        info = self.source.info
        return info is not None and info.duration <= _BRIEF_SECONDS

    def run(self) -> NormalizedAudio:
        """The audio as `target`; raises `AudioError` when the body turns out undecodable."""
        source, declared, target, out_rate = self.source, self.declared, self.target, self.out_rate
        notes: tuple[str, ...] = ()
        if source.label != declared:
            notes = (f"the deployment sent {source.label}, not the {declared} it was asked for",)
        if self.passes_through:
            info = source.stream_info()
            return NormalizedAudio(
                content=source.body,
                format=target,
                sample_rate=out_rate,
                duration=info.duration,
                source_format=source.format,
                source_rate=info.sample_rate,
                transcoded=False,
                notes=notes,
            )
        pcm, decoded = source.decode(out_rate)
        # The headers' word where there is one: an Opus decoder always runs at 48 kHz, but
        # the OpusHead rate is what the server produced.
        native = source.info or decoded
        described = f"{source.label} {native.sample_rate} Hz{_channels(native.channels)}"
        return NormalizedAudio(
            content=_encode_mono(to_mono(pcm, out_rate), target),
            format=target,
            sample_rate=out_rate,
            duration=pcm.duration,
            source_format=source.format,
            source_rate=native.sample_rate,
            transcoded=True,
            notes=(*notes, f"transcoded {described} -> {target} {out_rate} Hz"),
        )


def decode_to_pcm(
    body: bytes, *, declared: AudioFormat, declared_rate: int, target_rate: int
) -> PcmAudio:
    """`body` decoded to s16 mono at `target_rate`, for joining segments before one encode.

    Same sniffing and errors as `normalize`.
    """
    source = _Source.read(body, declared, declared_rate)
    return to_mono(source.decode(target_rate)[0], target_rate)


def encode_pcm(pcm: PcmAudio, target: AudioFormat) -> bytes:
    """`pcm` encoded once as `target`, mono, at ``encodable_rate(target, pcm.sample_rate)``."""
    return _encode_mono(to_mono(pcm, encodable_rate(target, pcm.sample_rate)), target)


def probe(
    body: bytes, *, declared: AudioFormat | None = None, declared_rate: int = 24_000
) -> ProbeResult:
    """Format, rate, channels and duration of `body`, from headers where they suffice.

    Headerless bytes are raw PCM only when ``declared=AudioFormat.PCM`` (s16le mono at
    `declared_rate`); otherwise they raise `AudioError`, as non-audio and cut-off bodies do.
    An Ogg stream that is not Opus (Vorbis, say) is named by `declared`; without it, it
    raises `AudioError` too, since it is none of the six formats.
    """
    container = sniff_container(body)
    if declared is None and container is None:
        raise AudioError("body has no audio header; pass declared=AudioFormat.PCM for raw PCM")
    if declared is None and container is not None and container.audio_format is None:
        raise AudioError(f"body is {container.value} audio, none of the six formats")
    source = _Source.read(body, declared or AudioFormat.PCM, declared_rate)
    info = source.stream_info()
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
            info = StreamInfo(declared_rate, 1, len(body) / 2 / declared_rate)
            return cls(body, None, AudioFormat.PCM, info, declared_rate)
        # An Ogg that is not Opus (Vorbis, Speex) is decodable but none of the six formats:
        # the label is the best name for it.
        fmt = container.audio_format or declared
        return cls(body, container, fmt, header_info(body, container), declared_rate)

    @property
    def label(self) -> str:
        """What the body is, in words: the format, or the container where that says more."""
        if self.container is Container.MP4:
            return "aac in mp4"  # openai-edge-tts
        if self.container is Container.OGG:
            return "ogg (not opus)"
        return self.format.value

    def stream_info(self) -> StreamInfo:
        """Rate, channels and duration: from the headers, else by decoding the whole body."""
        if self.info is not None:
            return self.info
        assert self.container is not None  # raw PCM always has its info
        return decode_info(self.body, self.container)

    def is_already(self, target: AudioFormat, rate: int) -> bool:
        """True when the body already is `target`, mono, at `rate`: known from headers alone."""
        if self.container is None:
            return target is AudioFormat.PCM and self.declared_rate == rate
        if self.format is not target or self.container is Container.MP4:
            return False  # MP4 AAC (openai-edge-tts) is not the raw ADTS callers expect
        if self.info is None or self.info.channels != 1:
            return False
        if self.container is Container.OGG_OPUS:
            # Every Opus stream decodes at 48 kHz, and a decoder can hand out 8, 12, 16, 24 or
            # 48 kHz directly; the rate in OpusHead is only what the encoder was fed,
            # informational (RFC 7845 §5.1). Re-encoding to rewrite it would cost a lossy
            # generation and CPU for nothing, so mono Opus passes through at any such rate.
            return True
        if self.info.sample_rate != rate:
            return False
        # Callers of "wav" get 16-bit samples, as from OpenAI; 24-bit or float WAV is converted.
        return self.container is not Container.WAV or parse_wav_header(self.body).is_s16

    def decode(self, rate: int) -> tuple[PcmAudio, StreamInfo]:
        """s16 PCM (mono at `rate` when FFmpeg decodes, as stored for WAV and raw PCM), and
        the rate, channels and duration the body really had."""
        if self.container is None:
            pcm = PcmAudio(samples=self.body, sample_rate=self.declared_rate)
            return pcm, _info_of(pcm)
        if self.container is Container.WAV:
            try:
                pcm = parse_wav(self.body)
                return pcm, _info_of(pcm)
            except UnsupportedWavEncodingError:
                pass  # mu-law, ADPCM and friends: FFmpeg decodes them below
        return decode(self.body, self.container, rate)


def _info_of(pcm: PcmAudio) -> StreamInfo:
    return StreamInfo(pcm.sample_rate, pcm.channels, pcm.duration)


def _channels(count: int) -> str:
    return "" if count == 1 else " stereo" if count == 2 else f" {count} channels"


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
