"""Audio as it arrives: decode a growing body to PCM, encode PCM into a growing file.

Streaming (SPEC §5) cannot wait for a whole body before normalizing it, so these classes take
bytes chunk by chunk and give back whatever they can already:

    decoder = StreamDecoder(declared=AudioFormat.WAV, declared_rate=24000, rate=24000)
    encoder = StreamEncoder(AudioFormat.MP3, 24000)
    for chunk in body:
        send(encoder.feed(decoder.feed(chunk)))
    send(encoder.feed(decoder.finish()) + encoder.finish())

`StreamDecoder` sniffs the first bytes (never trusting the label, SPEC §6) and picks a path:
WAV and raw PCM in plain Python; mp3, ADTS aac and FLAC through an FFmpeg parser and decoder;
Ogg Opus through a small Ogg page reader and FFmpeg's Opus decoder; anything else (aac in MP4,
whose index may sit at the end) is buffered and decoded at the end. `finish` raises
`AudioError` when the body was not audio or was cut short, so a truncated stream is never
taken for a complete one. `StreamEncoder` writes one continuous file: a WAV header with
0xFFFFFFFF sizes, or an FFmpeg muxer writing to a sink that cannot seek (so the mp3 muxer
writes no Info frame: its priming plays, as in any streamed mp3).

`passthrough` tells from a body's first bytes whether it already is what the caller asked
for; `BodyCheck` then verifies that a passed-through body ends where its container says.

Everything here is synchronous and CPU-bound; call it in a worker thread for large chunks.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable, Iterable
from fractions import Fraction
from typing import Any, Literal, Protocol

import av

from .._exceptions import AudioError
from ._formats import AudioFormat, encodable_rate
from ._normalize import decode_to_pcm
from ._resample import FFMPEG_ERRORS, pcm_frame
from ._sniff import (
    Container,
    adts_frame_header,
    id3_end,
    looks_like_text_error,
    mp3_frame_header,
    sniff_container,
)

# The WAV module's own chunk parsing and sample conversion, shared rather than copied.
from ._wav import (
    STREAMING_SIZE,
    UnsupportedWavEncodingError,
    WavInfo,
    _parse_fmt,
    _to_s16,
    wav_header,
)

__all__ = ["BodyCheck", "StreamDecoder", "StreamEncoder", "passthrough"]

# Bytes to look at before deciding that a body without a magic number is mp3, ADTS or raw
# PCM: enough for two mp3 frames at 128 kbit/s, 21 ms of 24 kHz PCM.
_HEAD_BYTES = 1024
# The FFmpeg parsers hand out at most one packet per call once their input is used up, so
# input is fed in slices this small to get packets out while the body is still arriving.
_PARSE_SLICE = 1024
# mp3 decoders output 529 samples of their own delay before the first real one (FFmpeg's
# mp3 demuxer adds the same 528 + 1 to the LAME encoder delay).
_MP3_DECODER_DELAY = 529
# The Ogg muxer flushes a page every `page_duration` microseconds (default one second):
# a tenth of a second keeps opus latency low at ~3 % overhead.
_OGG_PAGE_MICROSECONDS = "100000"

_ENCODERS: dict[AudioFormat, tuple[str, str, int | None, dict[str, str]]] = {
    # container, codec, bit rate, options: as _codec.encode writes whole files.
    AudioFormat.MP3: ("mp3", "libmp3lame", 128_000, {"compression_level": "7"}),
    AudioFormat.OPUS: ("ogg", "libopus", 64_000, {}),
    AudioFormat.AAC: ("adts", "aac", 128_000, {}),
    AudioFormat.FLAC: ("flac", "flac", None, {}),
}
_PARSED_CODECS: dict[Container, Literal["mp3", "aac", "flac"]] = {
    Container.MP3: "mp3",
    Container.ADTS: "aac",
    Container.FLAC: "flac",
}


class _Decoder(Protocol):
    def feed(self, data: bytes) -> bytes: ...
    def finish(self) -> bytes: ...


# -- decoding ---------------------------------------------------------------------------


class StreamDecoder:
    """Body bytes in, s16 mono PCM at `rate` out, as soon as they decode.

    `declared` is the format the server was asked for and `declared_rate` its native rate:
    they only matter when the body turns out to be headerless PCM.
    """

    def __init__(self, *, declared: AudioFormat, declared_rate: int, rate: int) -> None:
        self._declared = declared
        self._declared_rate = declared_rate
        self._rate = rate
        self._head = b""
        self._decoder: _Decoder | None = None
        self.container: Container | None = None  # what the body is, once known

    def feed(self, data: bytes) -> bytes:
        if self._decoder is not None:
            return self._decoder.feed(data)
        self._head += data
        if not _head_is_enough(self._head):
            return b""
        return self._start(self._head)

    def finish(self) -> bytes:
        """The rest of the PCM. Raises `AudioError` if the body was not audio or cut short."""
        if self._decoder is None:
            out = self._start(self._head)
            assert self._decoder is not None
            return out + self._decoder.finish()
        return self._decoder.finish()

    def _start(self, head: bytes) -> bytes:
        self._head = b""
        container = sniff_container(head)
        self.container = container
        rate = self._rate
        decoder: _Decoder
        if container is None:
            _check_raw_pcm(head, self._declared)
            decoder = _RawPcmDecoder(self._declared_rate, rate)
        elif container is Container.WAV:
            decoder = _WavDecoder(rate, fallback=self._buffered)
        elif container in _PARSED_CODECS:
            decoder = _ParsedDecoder(container, rate)
        elif container is Container.OGG_OPUS:
            decoder = _OggOpusDecoder(rate)
        else:  # MP4 keeps its index anywhere; Ogg Vorbis/Speex are rare: decode at the end
            decoder = self._buffered()
        self._decoder = decoder
        return decoder.feed(head)

    def _buffered(self) -> _Decoder:
        return _BufferedDecoder(self._declared, self._declared_rate, self._rate)


def _head_is_enough(head: bytes) -> bool:
    """True once the sniffer can tell what the body is."""
    if len(head) >= 4 and head[:4] in (b"RIFF", b"RF64", b"BW64", b"fLaC"):
        return len(head) >= 12
    if head[:4] == b"OggS":
        return len(head) >= 27 + (head[26] if len(head) > 26 else 255) + 8
    if head[:3] == b"ID3":
        return len(head) >= id3_end(head) + _HEAD_BYTES // 2
    return len(head) >= _HEAD_BYTES


def _check_raw_pcm(head: bytes, declared: AudioFormat) -> None:
    if looks_like_text_error(head):
        text = head[:80].decode("utf-8", errors="replace").strip()
        raise AudioError(f"body is a text error, not audio: {text!r}")
    if declared is not AudioFormat.PCM:
        raise AudioError(
            f"body labelled {declared} has no recognisable audio header (it starts "
            f"{head[:8].hex(' ')}): it is not audio, or its start is missing"
        )


class _Output:
    """Decoded audio in, s16 mono at `rate` out.

    Samples are first made s16 mono at the source's own rate, trimmed there (`skip` samples of
    codec priming dropped at the start, at most `limit` kept in all: codec padding), then
    resampled: trimming before the rate changes is what FFmpeg's demuxers do, so a streamed
    decode gives the very samples a whole-body decode gives.
    """

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.skip = 0
        self.limit: int | None = None
        self.kept = 0
        self._mono: av.AudioResampler | None = None  # any format and layout -> s16 mono
        self._mono_source: tuple[str, str, int] | None = None
        self._resampler: av.AudioResampler | None = None  # s16 mono, source rate -> `rate`
        self._source_rate = 0

    def frames(self, frames: Iterable[av.AudioFrame]) -> bytes:
        out = bytearray()
        for frame in frames:
            if frame.format.name == "s16" and frame.layout.nb_channels == 1:
                mono = bytes(memoryview(frame.planes[0])[: frame.samples * 2])
            else:
                mono = self._to_mono(frame)
            out += self._resample(self._trim(mono), frame.sample_rate)
        return bytes(out)

    def pcm(self, samples: bytes, rate: int, channels: int = 1) -> bytes:
        """Interleaved s16 `samples` at `rate`."""
        if channels != 1:
            return self.frames([pcm_frame(samples, rate, channels)])
        return self._resample(self._trim(samples), rate)

    def flush(self) -> bytes:
        tail = b""
        if self._mono is not None and self._mono_source is not None:
            tail = self._trim(_collect(self._mono.resample(None)))
            self._mono = None
        out = self._resample(tail, self._mono_source[2]) if tail and self._mono_source else b""
        return out + self._drain()

    def _to_mono(self, frame: av.AudioFrame) -> bytes:
        source = (frame.format.name, frame.layout.name, frame.sample_rate)
        flushed = b""
        if self._mono is None or source != self._mono_source:
            # A stream may change layout or rate midway; PyAV's resampler refuses that.
            if self._mono is not None:
                flushed = _collect(self._mono.resample(None))
            self._mono_source = source
            self._mono = av.AudioResampler(format="s16", layout="mono", rate=frame.sample_rate)
        frame.pts = None  # gaps in the source's timestamps are not ours to fill
        return flushed + _collect(self._mono.resample(frame))

    def _resample(self, samples: bytes, rate: int) -> bytes:
        if not samples:
            return b""
        if rate == self.rate and self._resampler is None:
            return samples
        out = b""
        if self._resampler is None or rate != self._source_rate:
            out = self._drain()
            self._source_rate = rate
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=self.rate)
        return out + _collect(self._resampler.resample(pcm_frame(samples, rate)))

    def _drain(self) -> bytes:
        if self._resampler is None:
            return b""
        resampler, self._resampler = self._resampler, None
        return _collect(resampler.resample(None))

    def _trim(self, samples: bytes) -> bytes:
        if self.skip:
            dropped = min(self.skip, len(samples) // 2)
            self.skip -= dropped
            samples = samples[2 * dropped :]
        if self.limit is not None:
            samples = samples[: 2 * max(0, self.limit - self.kept)]
        self.kept += len(samples) // 2
        return samples


def _collect(frames: Iterable[av.AudioFrame | None]) -> bytes:
    """The s16 mono samples of resampled frames (a pass-through flush answers [None])."""
    return b"".join(
        bytes(memoryview(out.planes[0])[: out.samples * 2]) for out in frames if out is not None
    )


class _RawPcmDecoder:
    """Headerless s16le mono at the deployment's declared rate."""

    def __init__(self, source_rate: int, rate: int) -> None:
        self._source_rate = source_rate
        self._output = _Output(rate)
        self._odd = b""  # a chunk may end between the two bytes of a sample

    def feed(self, data: bytes) -> bytes:
        data = self._odd + data
        whole = len(data) & ~1
        self._odd = data[whole:]
        return _convert(self._output.pcm, data[:whole], self._source_rate)

    def finish(self) -> bytes:
        if self._odd:
            raise AudioError("raw PCM body has an odd length: it was cut short or is not PCM")
        return _convert_flush(self._output)


class _WavDecoder:
    """RIFF WAVE: the header is read once, then samples convert as they arrive."""

    def __init__(self, rate: int, *, fallback: Callable[[], _Decoder]) -> None:
        self._output = _Output(rate)
        self._fallback = fallback
        self._delegate: _Decoder | None = None  # compressed samples: FFmpeg, at the end
        self._head = b""
        self._info: WavInfo | None = None
        self._left: int | None = None  # data bytes still expected; None: to the end
        self._partial = b""  # an incomplete sample frame

    def feed(self, data: bytes) -> bytes:
        if self._delegate is not None:
            return self._delegate.feed(data)
        if self._info is None:
            self._head += data
            data = self._read_header()
            if self._delegate is not None or self._info is None:
                return b""
        if self._left is not None:
            data = data[: self._left]  # chunks after the samples (LIST, id3) are not audio
            self._left -= len(data)
        return self._samples(data)

    def finish(self) -> bytes:
        if self._delegate is not None:
            return self._delegate.finish()
        if self._info is None:
            raise AudioError("WAV body ended before its 'data' chunk: it holds no samples")
        if self._left:
            raise AudioError(
                f"WAV body is cut short: {self._left} bytes of its data chunk are missing"
            )
        return _convert_flush(self._output)

    def _read_header(self) -> bytes:
        """Walk the chunks to the data chunk; the samples that came with the header."""
        head = self._head
        pos, fmt, ds64_size = 12, None, None
        while pos + 8 <= len(head):
            chunk_id = head[pos : pos + 4]
            (size,) = struct.unpack_from("<I", head, pos + 4)
            body = pos + 8
            if chunk_id == b"data":
                if fmt is None:
                    raise AudioError("WAV body has no 'fmt ' chunk before its samples")
                rate, channels, bits, is_float = fmt
                if size in (0, STREAMING_SIZE):
                    size = ds64_size if ds64_size else -1  # unknown: the samples run to the end
                self._info = WavInfo(rate, channels, bits, is_float, body, max(size, 0), size < 0)
                self._left = None if size < 0 else size
                self._head = b""
                return head[body:]
            if len(head) < body + size:
                return b""  # this chunk is still arriving
            if chunk_id == b"fmt ":
                try:
                    fmt = _parse_fmt(head[body : body + size])
                except UnsupportedWavEncodingError:
                    # mu-law, ADPCM and friends: FFmpeg decodes the whole body at the end.
                    self._delegate = self._fallback()
                    self._delegate.feed(head)
                    self._head = b""
                    return b""
            elif chunk_id == b"ds64" and size >= 16:
                (ds64_size,) = struct.unpack_from("<Q", head, body + 8)
            pos = body + size + (size & 1)
        return b""

    def _samples(self, data: bytes) -> bytes:
        info = self._info
        assert info is not None
        data = self._partial + data
        whole = len(data) - len(data) % info.block_align
        self._partial = data[whole:]
        if not whole:
            return b""
        samples = _to_s16(data[:whole], info)
        return self._output.pcm(samples, info.sample_rate, info.channels)


class _ParsedDecoder:
    """mp3, ADTS aac and FLAC: FFmpeg's parser finds the frames, its decoder decodes them."""

    def __init__(self, container: Container, rate: int) -> None:
        self._container = container
        self._output = _Output(rate)
        self._context = av.CodecContext.create(_PARSED_CODECS[container], "r")
        self._started = False
        self._decoded = 0
        self._errors = 0

    def feed(self, data: bytes) -> bytes:
        if not self._started:
            data = self._skip_tags(data)
        out = bytearray()
        try:
            for start in range(0, len(data), _PARSE_SLICE):
                out += self._decode(self._context.parse(data[start : start + _PARSE_SLICE]))
        except FFMPEG_ERRORS as exc:
            raise AudioError(f"body is not decodable {self._container.value}: {exc}") from exc
        return bytes(out)

    def finish(self) -> bytes:
        out = bytearray()
        try:
            # A parser hands out one held-back packet per flush call: call until it is empty.
            while packets := self._context.parse(None):
                out += self._decode(packets)
            out += self._decode([None])
            out += self._output.flush()
        except FFMPEG_ERRORS as exc:
            raise AudioError(f"body is not decodable {self._container.value}: {exc}") from exc
        if not self._decoded:
            raise AudioError(f"body holds no decodable {self._container.value} samples")
        return bytes(out)

    def _skip_tags(self, data: bytes) -> bytes:
        """An ID3 tag is not mp3 data; a LAME Info frame is a silent frame that also says how
        many samples of priming and padding to drop (SPEC §6: no gaps from codec padding)."""
        self._started = True
        data = data[id3_end(data) :]
        if self._container is Container.MP3:
            info = _lame_info(data)
            if info is not None:
                frame_length, frames, per_frame, delay, padding = info
                data = data[frame_length:]
                self._output.skip = delay + _MP3_DECODER_DELAY
                if frames:
                    self._output.limit = frames * per_frame - delay - padding
        return data

    def _decode(self, packets: Iterable[Any]) -> bytes:  # av.Packet, or None to flush
        out = bytearray()
        for packet in packets:
            try:
                frames = self._context.decode(packet)
            except av.error.InvalidDataError:
                # One damaged frame is skipped, as FFmpeg's demuxers do; none at all fails.
                self._errors += 1
                continue
            self._decoded += sum(frame.samples for frame in frames)
            out += self._output.frames(frames)
        return bytes(out)


def _lame_info(data: bytes) -> tuple[int, int, int, int, int] | None:
    """(frame length, frames, samples per frame, encoder delay, padding) of the Xing/Info
    frame at the start of `data`, or None when the first frame is audio."""
    header = mp3_frame_header(data, 0)
    if header is None:
        return None
    mono = header.channels == 1
    side_info = (17 if mono else 32) if header.mpeg1 else (9 if mono else 17)
    tag = 4 + side_info
    if data[tag : tag + 4] not in (b"Xing", b"Info") or len(data) < tag + 8:
        return None
    (flags,) = struct.unpack_from(">I", data, tag + 4)
    p = tag + 8
    frames = struct.unpack_from(">I", data, p)[0] if flags & 1 and len(data) >= p + 4 else 0
    p += 4 * bool(flags & 1) + 4 * bool(flags & 2) + 100 * bool(flags & 4) + 4 * bool(flags & 8)
    delay = padding = 0
    delay_padding = data[p + 21 : p + 24]
    if len(delay_padding) == 3 and data[p : p + 4].isalpha():  # "LAME", "Lavc", "Lavf"
        delay = (delay_padding[0] << 4) | (delay_padding[1] >> 4)
        padding = ((delay_padding[1] & 0x0F) << 8) | delay_padding[2]
    return header.frame_length, frames, header.samples, delay, padding


class _OggOpusDecoder:
    """Ogg Opus: pages are read here, packets decoded by FFmpeg's Opus decoder.

    The decoder drops the pre-skip itself (it reads it from the OpusHead); each page's granule
    position caps the samples out, which drops the encoder's padding at the end (RFC 7845 §4).
    """

    def __init__(self, rate: int) -> None:
        self._output = _Output(rate)
        self._pages = OggPageReader()
        self._context: av.AudioCodecContext | None = None
        self._pre_skip = 0
        self._packets = 0
        self._decoded = 0

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        try:
            for granule, packets in self._pages.feed(data):
                out += self._page(granule, packets)
        except FFMPEG_ERRORS as exc:
            raise AudioError(f"body is not decodable Ogg Opus: {exc}") from exc
        return bytes(out)

    def finish(self) -> bytes:
        if self._pages.pending:
            raise AudioError("Ogg body is cut short: its last page is incomplete")
        if self._context is None or not self._decoded:
            raise AudioError("Ogg Opus body holds no decodable samples")
        try:
            return self._output.frames(self._context.decode(None)) + self._output.flush()
        except FFMPEG_ERRORS as exc:
            raise AudioError(f"body is not decodable Ogg Opus: {exc}") from exc

    def _page(self, granule: int, packets: list[bytes]) -> bytes:
        if granule >= 0 and self._packets >= 2:
            # Granules count 48 kHz samples, the pre-skip included, up to the end of the last
            # packet completed on this page: all this page may add, priming and padding not.
            self._output.limit = granule - self._pre_skip
        out = bytearray()
        for packet in packets:
            self._packets += 1
            if self._packets == 1:
                if packet[:8] != b"OpusHead" or len(packet) < 19:
                    raise AudioError("Ogg body does not start with an OpusHead packet")
                (self._pre_skip,) = struct.unpack_from("<H", packet, 10)
                self._context = av.CodecContext.create("opus", "r")
                self._context.extradata = packet
                continue
            if self._packets == 2 or self._context is None:
                continue  # OpusTags: metadata, no audio
            frames = self._context.decode(av.Packet(packet))
            self._decoded += sum(frame.samples for frame in frames)
            out += self._output.frames(frames)
        return bytes(out)


class OggPageReader:
    """Ogg pages (RFC 3533) from bytes as they arrive: (granule position, completed packets)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._packet = b""  # a packet continued on the next page

    @property
    def pending(self) -> bool:
        """True when bytes of an incomplete page are waiting."""
        return bool(self._buffer)

    def feed(self, data: bytes) -> list[tuple[int, list[bytes]]]:
        buffer = self._buffer + data
        pages = []
        pos = 0
        while True:
            length = ogg_page_length(buffer, pos)
            if length is None:
                raise AudioError(f"Ogg body is corrupt: no page starts at byte {pos}")
            if length < 0 or pos + length > len(buffer):
                break
            segments = buffer[pos + 26]
            (granule,) = struct.unpack_from("<q", buffer, pos + 6)
            lacing = buffer[pos + 27 : pos + 27 + segments]
            body = pos + 27 + segments
            packets = []
            for size in lacing:
                self._packet += buffer[body : body + size]
                body += size
                if size < 255:
                    packets.append(self._packet)
                    self._packet = b""
            pages.append((granule, packets))
            pos += length
        self._buffer = buffer[pos:]
        return pages


def ogg_page_length(data: bytes, pos: int) -> int | None:
    """Length of the Ogg page at `pos`; -1 when more bytes are needed to tell; None if none."""
    magic = data[pos : pos + 4]
    if magic != b"OggS"[: len(magic)]:
        return None
    if len(data) < pos + 27:
        return -1
    segments = data[pos + 26]
    if len(data) < pos + 27 + segments:
        return -1
    return 27 + segments + sum(data[pos + 27 : pos + 27 + segments])


class _BufferedDecoder:
    """Containers that cannot be decoded piecewise (MP4): the whole body, at the end."""

    def __init__(self, declared: AudioFormat, declared_rate: int, rate: int) -> None:
        self._declared = declared
        self._declared_rate = declared_rate
        self._rate = rate
        self._parts: list[bytes] = []

    def feed(self, data: bytes) -> bytes:
        self._parts.append(data)
        return b""

    def finish(self) -> bytes:
        body = b"".join(self._parts)
        self._parts = []
        pcm = decode_to_pcm(
            body, declared=self._declared, declared_rate=self._declared_rate, target_rate=self._rate
        )
        return pcm.samples


def _convert(convert: Callable[[bytes, int], bytes], samples: bytes, rate: int) -> bytes:
    try:
        return convert(samples, rate)
    except FFMPEG_ERRORS as exc:
        raise AudioError(f"cannot resample audio from {rate} Hz: {exc}") from exc


def _convert_flush(output: _Output) -> bytes:
    try:
        return output.flush()
    except FFMPEG_ERRORS as exc:
        raise AudioError(f"cannot resample audio: {exc}") from exc


# -- encoding ---------------------------------------------------------------------------


class _Sink:
    """A file object that only appends: FFmpeg's muxers see a stream they cannot seek in."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


class StreamEncoder:
    """s16 mono PCM at `rate` in, one continuous `fmt` file out, piece by piece.

    `rate` must be one `fmt` accepts (see `encodable_rate`). Nothing is written before the
    first samples arrive, so a stream that fails before any audio costs no encoder, and the
    first piece out always holds encoded audio, not only a container header.
    """

    def __init__(self, fmt: AudioFormat, rate: int) -> None:
        if encodable_rate(fmt, rate) != rate:
            raise ValueError(f"{fmt} cannot be written at {rate} Hz; use encodable_rate()")
        self.format = fmt
        self.rate = rate
        self._started = False
        self._finished = False
        self._sink = _Sink()
        self._output: av.container.OutputContainer | None = None
        self._stream: av.AudioStream | None = None
        self._samples = 0
        # What the muxer wrote when it started (ID3, Ogg's OpusHead pages, FLAC's STREAMINFO):
        # held back until audio follows, since the first bytes handed over are the commit
        # point, and a header alone commits to nothing.
        self._header = b""

    def feed(self, pcm: bytes) -> bytes:
        if not pcm:
            return b""
        if self._finished:
            raise ValueError("the encoder is finished")
        if self.format is AudioFormat.PCM:
            return pcm
        header = b""
        if not self._started:
            self._started = True
            if self.format is AudioFormat.WAV:
                header = wav_header(self.rate)  # 0xFFFFFFFF sizes: the length is unknown
            else:
                self._open()
        if self.format is AudioFormat.WAV:
            return header + pcm
        assert self._output is not None
        assert self._stream is not None
        try:
            frame = pcm_frame(pcm, self.rate, pts=self._samples)
            self._samples += len(pcm) // 2
            self._output.mux(self._stream.encode(frame))
        except FFMPEG_ERRORS as exc:
            raise AudioError(f"cannot encode {self.format}: {exc}") from exc
        return self._take()

    def finish(self) -> bytes:
        """The encoder's last frames and the container's trailer. A stream that never got
        a sample still ends as a valid empty file."""
        if self._finished:
            return b""
        if not self._started and self.format is not AudioFormat.PCM:
            self._started = True
            if self.format is AudioFormat.WAV:
                self._finished = True
                return wav_header(self.rate, data_length=0)
            self._open()
        self._finished = True
        if self._output is None or self._stream is None:
            return b""
        try:
            self._output.mux(self._stream.encode(None))
            self._output.close()
        except FFMPEG_ERRORS as exc:
            raise AudioError(f"cannot finish the {self.format} stream: {exc}") from exc
        self._output = None
        out, self._header = self._header + self._sink.take(), b""
        return out

    def _take(self) -> bytes:
        out = self._sink.take()
        if out and self._header:
            out, self._header = self._header + out, b""
        return out

    def close(self) -> None:
        """Drops the encoder without writing anything more (the stream was abandoned)."""
        self._finished = True
        output, self._output = self._output, None
        if output is not None:
            with contextlib.suppress(*FFMPEG_ERRORS):  # abandoned: nothing is read from it
                output.close()
        self._sink.take()

    def _open(self) -> None:
        container, codec, bit_rate, options = _ENCODERS[self.format]
        format_options = {"page_duration": _OGG_PAGE_MICROSECONDS} if container == "ogg" else {}
        try:
            self._output = av.open(self._sink, "w", format=container, options=format_options)
            stream = self._output.add_stream(codec, rate=self.rate, options=options, layout="mono")
            assert isinstance(stream, av.AudioStream)
            if bit_rate is not None:
                # AAC caps a channel at 6144 bits per 1024-sample frame (6 bits per sample).
                cap = 6 * self.rate if self.format is AudioFormat.AAC else bit_rate
                stream.bit_rate = min(bit_rate, cap)
            stream.time_base = Fraction(1, self.rate)
            self._stream = stream
            self._output.start_encoding()
            self._header = self._sink.take()
        except FFMPEG_ERRORS as exc:
            raise AudioError(
                f"cannot start a {self.format} encoder at {self.rate} Hz: {exc}"
            ) from exc


# -- passing bodies through -------------------------------------------------------------


def passthrough(
    head: bytes, *, declared: AudioFormat, declared_rate: int, target: AudioFormat, rate: int
) -> bool | None:
    """True when a body starting with `head` already is `target`, mono, at `rate`, so its
    bytes can go to the caller unchanged; None when `head` is too short to tell."""
    if not _head_is_enough(head):
        return None
    container = sniff_container(head)
    if container is None:
        return (
            target is AudioFormat.PCM
            and declared is AudioFormat.PCM
            and declared_rate == rate
            and not looks_like_text_error(head)
        )
    if container.audio_format is not target or container is Container.MP4:
        return False
    facts = _head_facts(head, container)
    return facts is not None and facts == (rate, 1, 16 if container is Container.WAV else facts[2])


def _head_facts(head: bytes, container: Container) -> tuple[int, int, int] | None:
    """(rate, channels, bits per sample) the first header says; None if it says too little."""
    if container is Container.MP3:
        start = id3_end(head)
        mp3 = mp3_frame_header(head, start)
        return None if mp3 is None else (mp3.sample_rate, mp3.channels, 0)
    if container is Container.ADTS:
        adts = adts_frame_header(head, id3_end(head))
        return None if adts is None or adts.channels == 0 else (adts.sample_rate, adts.channels, 0)
    if container is Container.OGG_OPUS:
        body = 27 + head[26]  # after the first page's header and segment table
        packet = head[body : body + 16]
        if packet[:8] != b"OpusHead" or len(packet) < 16:
            return None
        (input_rate,) = struct.unpack_from("<I", packet, 12)
        return (input_rate or 48000, packet[9], 0)
    if container is Container.FLAC:
        info = head[8:26] if head[4] & 0x7F == 0 else b""  # STREAMINFO comes first
        if len(info) < 18:
            return None
        packed = int.from_bytes(info[10:18], "big")
        rate = packed >> 44
        channels = ((packed >> 41) & 0x7) + 1
        bits = ((packed >> 36) & 0x1F) + 1
        return (rate, channels, bits)
    if container is Container.WAV:
        pos = 12
        while pos + 8 <= len(head):
            (size,) = struct.unpack_from("<I", head, pos + 4)
            if head[pos : pos + 4] == b"fmt ":
                try:
                    rate, channels, bits, is_float = _parse_fmt(head[pos + 8 : pos + 8 + size])
                except AudioError:
                    return None
                return None if is_float else (rate, channels, bits)
            pos += 8 + size + (size & 1)
    return None


class BodyCheck:
    """Follows a passed-through body's framing, so a body cut at a frame boundary's wrong
    side is caught at its end: the decoder would have caught it, pass-through must too."""

    def __init__(self, head: bytes, *, declared_rate: int) -> None:
        self._container = sniff_container(head)
        self._received = 0
        self._walk_at = 0  # where the next frame or page starts, counted from the body start
        self._tail = b""  # the bytes from `_walk_at` on that we have, when a header is split
        self._lost = False  # framing not followed (a tag at the end, free-format mp3)
        self._wav_end: int | None = None
        if self._container in (Container.MP3, Container.ADTS):
            self._walk_at = id3_end(head)
        elif self._container is Container.WAV:
            self._wav_end = _wav_data_end(head)

    def feed(self, data: bytes) -> None:
        start = self._received  # where `data` starts in the body
        self._received += len(data)
        walking = (Container.MP3, Container.ADTS, Container.OGG_OPUS, Container.OGG)
        if self._container not in walking or self._lost or self._walk_at >= self._received:
            return
        # From the next frame's start on; a kept tail ends exactly where `data` begins.
        buffer = self._tail + data if self._tail else data[self._walk_at - start :]
        base, pos = self._walk_at, 0
        while True:
            length = self._frame_length(buffer, pos)
            if length is None:
                self._lost = True
                return
            if length < 0:  # the header itself is split: keep it for the next chunk
                self._tail, self._walk_at = buffer[pos:], base + pos
                return
            pos += length
            if pos >= len(buffer):
                self._tail, self._walk_at = b"", base + pos
                return

    def check(self) -> None:
        """Raises `AudioError` when the body ended inside a frame or before its data size."""
        container = self._container
        if container is None:
            if self._received % 2:
                raise AudioError("raw PCM body has an odd length: it was cut short")
        elif container is Container.WAV:
            if self._wav_end is not None and self._received < self._wav_end:
                missing = self._wav_end - self._received
                raise AudioError(f"WAV body is cut short: {missing} bytes of its data are missing")
        elif not self._lost and (self._tail or self._walk_at > self._received):
            raise AudioError(f"{container.value} body is cut short: its last frame is incomplete")

    def _frame_length(self, data: bytes, pos: int) -> int | None:
        if self._container in (Container.OGG_OPUS, Container.OGG):
            return ogg_page_length(data, pos)
        need = 4 if self._container is Container.MP3 else 7
        if len(data) < pos + need:
            return -1
        if self._container is Container.MP3:
            mp3 = mp3_frame_header(data, pos)
            return None if mp3 is None else mp3.frame_length
        adts = adts_frame_header(data, pos)
        return None if adts is None else adts.frame_length


def _wav_data_end(head: bytes) -> int | None:
    """Where a WAV's samples end when its data chunk states a size; None if it does not."""
    pos = 12
    while pos + 8 <= len(head):
        (size,) = struct.unpack_from("<I", head, pos + 4)
        if head[pos : pos + 4] == b"data":
            return None if size in (0, STREAMING_SIZE) else pos + 8 + size
        pos += 8 + size + (size & 1)
    return None
