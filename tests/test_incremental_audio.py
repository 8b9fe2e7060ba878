"""Audio as it arrives (`_audio/_incremental.py`): the pure cores of streaming normalization."""

from __future__ import annotations

import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient_tts import AudioError
from resilient_tts._audio import (
    AudioFormat,
    BodyCheck,
    StreamDecoder,
    StreamEncoder,
    decode_to_pcm,
    passthrough,
)
from resilient_tts._audio._sniff import id3_end, mp3_frame_header
from resilient_tts.testing._audio import encode, tone_pcm
from tests.audio.audio_support import judge

FORMATS = ["pcm", "wav", "mp3", "opus", "aac", "flac"]


def body(fmt: str, rate: int = 24000, seconds: float = 1.5, *, mp4: bool = False) -> bytes:
    return encode(tone_pcm(round(seconds * rate), rate), rate, fmt, mp4=mp4)


def largest_difference(a: bytes, b: bytes) -> int:
    return max(abs(x - y) for x, y in zip(array.array("h", a), array.array("h", b), strict=True))


def decode_in_pieces(data: bytes, fmt: str, step: int, *, rate: int = 24000) -> bytes:
    decoder = StreamDecoder(declared=AudioFormat(fmt), declared_rate=rate, rate=24000)
    pieces = [decoder.feed(data[i : i + step]) for i in range(0, len(data), step)]
    return b"".join(pieces) + decoder.finish()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("rate", [24000, 22050])
@pytest.mark.parametrize("step", [97, 4096, 10**7])
def test_piecewise_decoding_equals_decoding_the_whole_body(fmt: str, rate: int, step: int) -> None:
    """However the body is cut into chunks, the PCM is what a whole-body decode gives."""
    data = body(fmt, rate)
    whole = decode_to_pcm(data, declared=AudioFormat(fmt), declared_rate=rate, target_rate=24000)
    streamed = decode_in_pieces(data, fmt, step, rate=rate)
    assert len(streamed) == len(whole.samples)
    if fmt in ("pcm", "wav", "flac"):
        assert streamed == whole.samples
    else:  # float decoders: s16 is rounded at another step, so a sample may differ by 1 or 2
        assert largest_difference(streamed, whole.samples) <= 2


def test_mp3_priming_and_padding_are_dropped_as_its_lame_header_says() -> None:
    """An mp3 with a LAME Info frame gives back exactly the samples that were encoded."""
    assert len(decode_in_pieces(body("mp3", seconds=1), "mp3", 500)) == 2 * 24000


def test_aac_in_mp4_is_decoded_at_the_end() -> None:
    """openai-edge-tts's aac in MP4 cannot be decoded piecewise; it still decodes whole."""
    data = body("aac", mp4=True)
    decoder = StreamDecoder(declared=AudioFormat.AAC, declared_rate=24000, rate=24000)
    assert decoder.feed(data) == b""
    assert len(decoder.finish()) >= 2 * 36000


@settings(max_examples=100, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=72_044), max_size=20))
def test_wav_cut_anywhere_decodes_the_same(cuts: list[int]) -> None:
    """Chunk boundaries inside the header, a sample or a frame change nothing."""
    data = body("wav")
    decoder = StreamDecoder(declared=AudioFormat.WAV, declared_rate=24000, rate=24000)
    out, start = b"", 0
    for end in [*sorted(cuts), len(data)]:
        out += decoder.feed(data[start:end])
        start = max(start, end)
    assert out + decoder.finish() == data[44:]


@pytest.mark.parametrize(
    ("data", "declared", "message"),
    [
        (b'{"error": {"message": "CUDA out of memory"}}' * 30, "pcm", "text error"),
        (bytes(range(256)) * 8, "mp3", "no recognisable audio header"),
    ],
    ids=["json-as-pcm", "garbage-as-mp3"],
)
def test_what_is_not_audio_is_refused(data: bytes, declared: str, message: str) -> None:
    decoder = StreamDecoder(declared=AudioFormat(declared), declared_rate=24000, rate=24000)
    with pytest.raises(AudioError, match=message):
        decoder.feed(data)


@pytest.mark.parametrize("fmt", ["wav", "opus", "pcm"])
def test_a_body_cut_short_fails_at_its_end(fmt: str) -> None:
    """A WAV short of its data size, an Ogg page cut off, an odd PCM length: not complete."""
    data = body(fmt)
    cut = data[: len(data) // 2 + 1]
    decoder = StreamDecoder(declared=AudioFormat(fmt), declared_rate=24000, rate=24000)
    decoder.feed(cut)
    with pytest.raises(AudioError, match=r"cut short|odd length|incomplete"):
        decoder.finish()


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_body_already_right_is_passed_through(fmt: str) -> None:
    """Same format, rate and mono: the bytes can go to the caller as they are."""
    data = body(fmt)
    decided = passthrough(
        data[:2048],
        declared=AudioFormat(fmt),
        declared_rate=24000,
        target=AudioFormat(fmt),
        rate=24000,
    )
    assert decided is True


@pytest.mark.parametrize(
    ("data", "declared", "target", "rate"),
    [
        (body("wav", 22050), "wav", "wav", 24000),  # another rate
        (body("wav"), "pcm", "pcm", 24000),  # LocalAI: WAV when asked for pcm
        (body("aac", mp4=True), "aac", "aac", 24000),  # MP4, not the ADTS callers expect
        (body("mp3"), "mp3", "opus", 24000),  # another format
        (body("pcm"), "pcm", "pcm", 16000),  # raw PCM at the wrong rate
    ],
    ids=["rate", "wav-for-pcm", "mp4-aac", "format", "pcm-rate"],
)
def test_anything_else_is_converted(data: bytes, declared: str, target: str, rate: int) -> None:
    decided = passthrough(
        data,
        declared=AudioFormat(declared),
        declared_rate=24000,
        target=AudioFormat(target),
        rate=rate,
    )
    assert decided is False


def test_a_head_too_short_to_tell_decides_nothing_yet() -> None:
    data = body("pcm")
    pcm, target = AudioFormat.PCM, AudioFormat.PCM
    assert (
        passthrough(data[:100], declared=pcm, declared_rate=24000, target=target, rate=24000)
        is None
    )


def test_stereo_is_not_passed_through() -> None:
    stereo = tone_pcm(24000, 24000)
    interleaved = b"".join(stereo[i : i + 2] * 2 for i in range(0, len(stereo), 2))
    data = encode(interleaved, 24000, "wav")
    data = (
        data[:22]
        + b"\x02\x00"
        + data[24:28]
        + (96000).to_bytes(4, "little")
        + b"\x04\x00"
        + data[34:]
    )
    assert not passthrough(
        data[:2048],
        declared=AudioFormat.WAV,
        declared_rate=24000,
        target=AudioFormat.WAV,
        rate=24000,
    )


@pytest.mark.parametrize("fmt", ["pcm", "wav", "mp3", "opus", "aac"])
def test_a_passed_through_body_is_checked_for_its_end(fmt: str) -> None:
    """Followed frame by frame, a whole body passes and a body cut mid-frame does not."""
    data = body(fmt)
    for size, complete in ((len(data), True), (len(data) - 5, False)):
        check = BodyCheck(data[:2048], declared_rate=24000)
        for start in range(0, size, 333):
            check.feed(data[start : min(start + 333, size)])
        if complete:
            check.check()
        else:
            with pytest.raises(AudioError, match="cut short"):
                check.check()


@pytest.mark.parametrize("fmt", FORMATS)
def test_piecewise_encoding_makes_one_valid_file(fmt: str) -> None:
    """Fed in 0.2 s pieces, the encoder writes one file that an independent decoder reads
    as mono 24 kHz of the right length (streamed mp3 and aac keep their codec priming)."""
    pcm = tone_pcm(36000, 24000)
    encoder = StreamEncoder(AudioFormat(fmt), 24000)
    pieces = [encoder.feed(pcm[i : i + 9600]) for i in range(0, len(pcm), 9600)]
    data = b"".join(pieces) + encoder.finish()
    judged = judge(data, AudioFormat(fmt), 24000)
    assert judged.channels == 1
    slack = {"mp3": 2 * 1152, "aac": 2 * 1024}.get(fmt, 0) / 24000
    assert 1.5 - 1e-6 <= judged.duration <= 1.5 + slack + 1e-6
    if fmt == "wav":
        assert data[4:8] == data[40:44] == b"\xff\xff\xff\xff"


def test_the_first_piece_out_holds_audio_not_only_a_header() -> None:
    """The ID3 tag the mp3 muxer writes first is held back until an audio frame follows."""
    encoder = StreamEncoder(AudioFormat.MP3, 24000)
    assert encoder.feed(tone_pcm(100, 24000)) == b""  # too little for one mp3 frame
    first = encoder.feed(tone_pcm(4800, 24000))
    assert mp3_frame_header(first, id3_end(first)) is not None


def test_an_encoder_refuses_a_rate_its_format_cannot_take() -> None:
    with pytest.raises(ValueError, match="encodable_rate"):
        StreamEncoder(AudioFormat.OPUS, 22050)
