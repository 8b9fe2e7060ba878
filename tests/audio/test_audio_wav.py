"""WAV in plain Python: every PCM layout servers send, and only `AudioError` on garbage."""

from __future__ import annotations

import contextlib
import struct
from array import array

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilient_tts._audio import (
    STREAMING_SIZE,
    AudioFormat,
    PcmAudio,
    parse_wav,
    wav_header,
    write_wav,
)
from resilient_tts._audio._wav import UnsupportedWavEncodingError, parse_wav_header
from resilient_tts._exceptions import AudioError

from .audio_support import judge, needs_ffmpeg, tone


def _fmt_chunk(tag: int, channels: int, rate: int, bits: int, extensible_tag: int = 0) -> bytes:
    block = channels * bits // 8
    body = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    if tag == 0xFFFE:
        guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        body += struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", extensible_tag) + guid_tail
    return _chunk(b"fmt ", body)


def _chunk(chunk_id: bytes, body: bytes, size: int | None = None) -> bytes:
    pad = b"\x00" if len(body) % 2 else b""
    return chunk_id + struct.pack("<I", len(body) if size is None else size) + body + pad


def _wav(*chunks: bytes, riff_size: int | None = None) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body) if riff_size is None else riff_size) + body


S16 = array("h", [0, 1000, -1000, 32767, -32768, 12345]).tobytes()


def test_plain_s16_mono() -> None:
    """The canonical WAV parses to its own samples."""
    pcm = parse_wav(_wav(_fmt_chunk(1, 1, 24000, 16), _chunk(b"data", S16)))
    assert pcm == PcmAudio(S16, 24000, 1)


def test_other_chunks_and_odd_sizes_are_skipped() -> None:
    """LIST and odd-sized chunks (padded to even, as RIFF requires) before the samples."""
    body = _wav(
        _chunk(b"LIST", b"INFOISFT\x05\x00\x00\x00Lavf\x00"),
        _fmt_chunk(1, 1, 22050, 16),
        _chunk(b"odd ", b"abc"),
        _chunk(b"data", S16),
        _chunk(b"LIST", b"trailing"),
    )
    assert parse_wav(body) == PcmAudio(S16, 22050)


@pytest.mark.parametrize("size", [STREAMING_SIZE, 0])
def test_unknown_sizes_run_to_the_end(size: int) -> None:
    """OpenAI streams WAV with 0xFFFFFFFF sizes, others with 0: the samples run to the end."""
    body = _wav(_fmt_chunk(1, 1, 24000, 16), _chunk(b"data", S16, size=size), riff_size=size)
    info = parse_wav_header(body)
    assert info.streaming
    assert parse_wav(body).samples == S16
    # A sample cut in half at the end of a stream is dropped, not misread.
    assert parse_wav(body + b"\x01").samples == S16


def test_extensible_pcm_and_float() -> None:
    """WAVE_FORMAT_EXTENSIBLE names the real encoding in its SubFormat GUID."""
    pcm = parse_wav(_wav(_fmt_chunk(0xFFFE, 1, 16000, 16, 1), _chunk(b"data", S16)))
    assert pcm == PcmAudio(S16, 16000)
    floats = array("f", [0.0, 0.5, -0.5]).tobytes()
    pcm = parse_wav(_wav(_fmt_chunk(0xFFFE, 1, 16000, 32, 3), _chunk(b"data", floats)))
    assert array("h", pcm.samples).tolist() == [0, 16384, -16384]


def test_integer_widths_keep_the_top_16_bits() -> None:
    """8-bit (unsigned), 24-bit and 32-bit samples become s16."""
    u8 = bytes([128, 255, 0])
    pcm = parse_wav(_wav(_fmt_chunk(1, 1, 8000, 8), _chunk(b"data", u8)))
    assert array("h", pcm.samples).tolist() == [0, 127 << 8, -32768]
    s24 = b"\x56\x34\x12" + b"\x00\x00\x80"
    pcm = parse_wav(_wav(_fmt_chunk(1, 1, 8000, 24), _chunk(b"data", s24)))
    assert array("h", pcm.samples).tolist() == [0x1234, -32768]
    s32 = struct.pack("<ii", 0x12345678, -(2**31))
    pcm = parse_wav(_wav(_fmt_chunk(1, 1, 8000, 32), _chunk(b"data", s32)))
    assert array("h", pcm.samples).tolist() == [0x1234, -32768]


def test_float_samples_clip_and_nan_is_silence() -> None:
    """Out-of-range floats clip; NaN becomes 0 instead of crashing."""
    floats = array("d", [1.0, -1.0, 2.0, -2.0, float("nan")]).tobytes()
    pcm = parse_wav(_wav(_fmt_chunk(3, 1, 8000, 64), _chunk(b"data", floats)))
    assert array("h", pcm.samples).tolist() == [32767, -32768, 32767, -32768, 0]


def test_multi_channel_stays_interleaved() -> None:
    """Stereo is kept as it is; downmixing is swresample's job."""
    stereo = array("h", [1, 2, 3, 4]).tobytes()
    pcm = parse_wav(_wav(_fmt_chunk(1, 2, 24000, 16), _chunk(b"data", stereo)))
    assert (pcm.channels, pcm.frames, pcm.samples) == (2, 2, stereo)


def test_rf64() -> None:
    """RF64 keeps its sizes in a ds64 chunk."""
    ds64 = _chunk(b"ds64", struct.pack("<QQQI", 0, len(S16), 3, 0))
    body = b"RF64" + struct.pack("<I", STREAMING_SIZE) + b"WAVE" + ds64
    body += _fmt_chunk(1, 1, 24000, 16) + _chunk(b"data", S16, size=STREAMING_SIZE)
    assert parse_wav(body + b"trailing") == PcmAudio(S16, 24000)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"RIFF\x00\x00\x00\x00WAVE", "no 'fmt ' chunk"),
        (_wav(_fmt_chunk(1, 1, 24000, 16)), "no 'data' chunk"),
        (_wav(_fmt_chunk(1, 1, 24000, 16), _chunk(b"data", S16, size=1000)), "cut short"),
        (_wav(_fmt_chunk(1, 1, 24000, 12), _chunk(b"data", S16)), "12-bit"),
        (_wav(_fmt_chunk(1, 0, 24000, 16), _chunk(b"data", S16)), "corrupt"),
        (b"RIFX\x00\x00\x00\x00WAVE", "not a WAV"),
    ],
)
def test_broken_wav_raises_audio_error(body: bytes, message: str) -> None:
    """Each way a WAV can be broken has its own clear message."""
    with pytest.raises(AudioError, match=message):
        parse_wav(body)


def test_compressed_wav_is_left_to_ffmpeg() -> None:
    """mu-law and friends are WAV but not PCM: a distinct error so FFmpeg can decode them."""
    with pytest.raises(UnsupportedWavEncodingError):
        parse_wav(_wav(_fmt_chunk(7, 1, 8000, 8), _chunk(b"data", b"\xff" * 10)))


def test_header_for_known_and_streaming_length() -> None:
    """A 44-byte header with exact sizes, or OpenAI's 0xFFFFFFFF when streaming."""
    header = wav_header(24000, 1, 100)
    assert len(header) == 44
    assert struct.unpack_from("<I", header, 4)[0] == 136
    assert struct.unpack_from("<I", header, 40)[0] == 100
    streaming = wav_header(24000)
    assert struct.unpack_from("<I", streaming, 4)[0] == STREAMING_SIZE
    assert struct.unpack_from("<I", streaming, 40)[0] == STREAMING_SIZE


def test_write_then_parse_round_trips() -> None:
    """What we write, we read back unchanged."""
    pcm = tone(22050, 0.05)
    assert parse_wav(write_wav(pcm)) == pcm


@needs_ffmpeg
@pytest.mark.parametrize("streaming", [False, True])
def test_ffprobe_reads_our_wav(streaming: bool) -> None:
    """An independent reader agrees on codec, rate, channels and length."""
    pcm = tone(16000, 0.25)
    body = wav_header(16000) + pcm.samples if streaming else write_wav(pcm)
    judged = judge(body, AudioFormat.WAV, 16000)
    assert (judged.codec, judged.sample_rate, judged.channels) == ("pcm_s16le", 16000, 1)
    assert judged.duration == pytest.approx(0.25, abs=0.001)


@given(st.binary(max_size=512))
def test_garbage_raises_only_audio_error(data: bytes) -> None:
    """Whatever the bytes, parse_wav returns or raises AudioError: nothing else."""
    with contextlib.suppress(AudioError):
        parse_wav(data)


@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"fmt ", b"data", b"LIST", b"ds64", b"junk"]),
            st.binary(max_size=40),
            st.one_of(st.none(), st.integers(0, 2**32 - 1)),
        ),
        max_size=5,
    ),
    st.sampled_from([b"RIFF", b"RF64"]),
)
def test_garbled_chunks_raise_only_audio_error(
    chunks: list[tuple[bytes, bytes, int | None]], magic: bytes
) -> None:
    """Well-framed but nonsensical chunks: still only AudioError."""
    body = magic + b"\xff\xff\xff\xffWAVE" + b"".join(_chunk(c, b, s) for c, b, s in chunks)
    with contextlib.suppress(AudioError):
        parse_wav(body)
