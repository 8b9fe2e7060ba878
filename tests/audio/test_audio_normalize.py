"""normalize(): labels are not trusted, unchanged bodies pass through, non-audio raises."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient_tts._audio import (
    AudioFormat,
    PcmAudio,
    decode_to_pcm,
    encode_pcm,
    normalize,
    plan,
    probe,
    sniff,
    wav_header,
    write_wav,
)
from resilient_tts._exceptions import AudioError

from .audio_support import (
    CLIP_SECONDS,
    TOLERANCE,
    by_ffmpeg,
    ffmpeg_encode,
    interleave,
    judge,
    needs_ffmpeg,
    ours,
    tone,
)

MP3, OPUS, AAC, FLAC, WAV, PCM = (
    AudioFormat.MP3,
    AudioFormat.OPUS,
    AudioFormat.AAC,
    AudioFormat.FLAC,
    AudioFormat.WAV,
    AudioFormat.PCM,
)


# -- pass-through -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(AudioFormat))
def test_unchanged_body_is_the_same_object(fmt: AudioFormat) -> None:
    """Already the target format, rate and mono: the body itself comes back, no copy."""
    body = ours(fmt)
    result = normalize(body, declared=fmt, declared_rate=24000, target=fmt, target_rate=24000)
    assert result.content is body
    assert not result.transcoded
    assert (result.format, result.source_format, result.sample_rate) == (fmt, fmt, 24000)
    if fmt is not AAC:  # ADTS counts its priming frame (see test_audio_matrix)
        assert result.duration == pytest.approx(CLIP_SECONDS, abs=0.001)


def test_openai_streaming_wav_passes_through() -> None:
    """OpenAI's wav (0xFFFFFFFF sizes, 24 kHz s16 mono) is already right."""
    body = wav_header(24000) + tone(24000, 0.2).samples
    result = normalize(body, declared=WAV, declared_rate=24000, target=WAV, target_rate=24000)
    assert result.content is body
    assert result.duration == pytest.approx(0.2, abs=0.001)


@pytest.mark.parametrize(
    "body",
    [
        write_wav(interleave(tone(24000, 0.1), tone(24000, 0.1))),  # stereo
        write_wav(tone(22050, 0.1)),  # another rate
    ],
    ids=["stereo", "22050"],
)
def test_wav_that_differs_is_converted(body: bytes) -> None:
    """Stereo or another rate is not passed through."""
    result = normalize(body, declared=WAV, declared_rate=24000, target=WAV, target_rate=24000)
    assert result.transcoded
    assert result.content[:4] == b"RIFF"
    assert result.content[22:24] == b"\x01\x00"  # one channel
    assert result.duration == pytest.approx(0.1, abs=0.001)


def test_float_wav_is_converted_to_16_bit() -> None:
    """chatterbox-style float32 WAV becomes the 16-bit WAV OpenAI callers expect."""
    floats = bytes(4 * 2400)
    fmt = (
        b"fmt "
        + (16).to_bytes(4, "little")
        + bytes.fromhex("0300 0100 c05d0000 00770100 0400 2000")
    )
    body = b"RIFF" + (4 + 24 + 8 + len(floats)).to_bytes(4, "little") + b"WAVE" + fmt
    body += b"data" + len(floats).to_bytes(4, "little") + floats
    result = normalize(body, declared=WAV, declared_rate=24000, target=WAV, target_rate=24000)
    assert result.transcoded
    assert result.content == write_wav(PcmAudio(bytes(2 * 2400), 24000))


def test_codec_at_another_rate_is_transcoded() -> None:
    """mp3 at 24 kHz asked for at 16 kHz is re-encoded, not passed through."""
    result = normalize(ours(MP3), declared=MP3, declared_rate=24000, target=MP3, target_rate=16000)
    assert result.transcoded
    assert probe(result.content).sample_rate == 16000


# -- mislabelled bodies (SPEC §6) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "actual", "declared", "target"),
    [
        ("any: WAV labelled mp3", WAV, MP3, MP3),
        ("any: mp3 labelled aac", MP3, AAC, AAC),
        ("LocalAI: WAV for pcm", WAV, PCM, PCM),
        ("Kokoros: mp3 for flac", MP3, FLAC, FLAC),
        ("Kokoros: mp3 for aac", MP3, AAC, AAC),
        ("any: opus labelled wav", OPUS, WAV, WAV),
    ],
)
def test_mislabelled_bodies_come_out_right(
    server: str, actual: AudioFormat, declared: AudioFormat, target: AudioFormat
) -> None:
    """The bytes decide what the body is; the caller still gets the target format."""
    result = normalize(
        ours(actual), declared=declared, declared_rate=24000, target=target, target_rate=24000
    )
    assert result.source_format is actual
    assert result.transcoded
    assert sniff(result.content) is (None if target is PCM else target)
    assert decode_to_pcm(
        result.content, declared=target, declared_rate=24000, target_rate=24000
    ).duration == pytest.approx(CLIP_SECONDS, abs=TOLERANCE + (0.09 if target is AAC else 0))


@pytest.mark.parametrize(
    ("body", "declared", "target", "notes"),
    [
        (ours(MP3), MP3, MP3, ()),
        (write_wav(tone(22050, 0.1)), WAV, MP3, ("transcoded wav 22050 Hz -> mp3 24000 Hz",)),
        (
            write_wav(interleave(tone(24000, 0.1), tone(24000, 0.1))),
            WAV,
            WAV,
            ("transcoded wav 24000 Hz stereo -> wav 24000 Hz",),
        ),
        (
            write_wav(tone(24000, 0.1)),
            PCM,
            PCM,
            (
                "the deployment sent wav, not the pcm it was asked for",
                "transcoded wav 24000 Hz -> pcm 24000 Hz",
            ),
        ),
        (tone(22050, 0.1).samples, PCM, OPUS, ("transcoded pcm 22050 Hz -> opus 24000 Hz",)),
    ],
    ids=["pass-through", "resampled", "downmixed", "localai-mislabelled", "piper-raw-pcm"],
)
def test_notes_say_what_was_done(
    body: bytes, declared: AudioFormat, target: AudioFormat, notes: tuple[str, ...]
) -> None:
    """`notes` tell a mislabelled body and a transcode in words; a pass-through has none."""
    # Only the headerless body is read at the declared rate: piper's 22.05 kHz.
    result = normalize(
        body, declared=declared, declared_rate=22050, target=target, target_rate=24000
    )
    assert result.notes == notes


@needs_ffmpeg
def test_notes_name_aac_in_mp4() -> None:
    """openai-edge-tts's MP4 is named as such, with the rate the decoder found."""
    result = normalize(
        by_ffmpeg("mp4"), declared=AAC, declared_rate=24000, target=AAC, target_rate=24000
    )
    assert result.notes == (
        "the deployment sent aac in mp4, not the aac it was asked for",
        "transcoded aac in mp4 24000 Hz -> aac 24000 Hz",
    )
    assert result.source_rate == 24000


@pytest.mark.parametrize(
    ("body", "declared", "target", "brief"),
    [
        (ours(MP3), MP3, MP3, True),  # pass-through, whatever its length
        (ours(MP3), MP3, FLAC, False),  # a second of audio to transcode
        (tone(24000, 0.4).samples, PCM, MP3, True),  # a short transcode
        (ours(AAC), AAC, AAC, True),
    ],
    ids=["pass-through", "long-transcode", "short-transcode", "adts-pass-through"],
)
def test_plan_tells_from_headers_whether_the_work_is_brief(
    body: bytes, declared: AudioFormat, target: AudioFormat, brief: bool
) -> None:
    """plan() reads only headers: whether the body passes through and whether a transcode is
    short enough to run on the event loop; run() gives what normalize() gives."""
    conversion = plan(
        body, declared=declared, declared_rate=24000, target=target, target_rate=24000
    )
    assert conversion.is_brief is brief
    assert conversion.passes_through is (declared is target)
    assert conversion.run() == normalize(
        body, declared=declared, declared_rate=24000, target=target, target_rate=24000
    )


@needs_ffmpeg
def test_plan_of_mp4_is_not_brief() -> None:
    """An MP4's length is not in headers we read: it is transcoded off the event loop."""
    conversion = plan(
        by_ffmpeg("mp4"), declared=AAC, declared_rate=24000, target=AAC, target_rate=24000
    )
    assert not conversion.passes_through
    assert not conversion.is_brief


def test_plan_rejects_non_audio_from_the_headers() -> None:
    """Empty, text and cut-off bodies fail at plan(), before any decoding."""
    for body in (b"", b'{"detail": "no"}', ours(MP3)[:1000]):
        with pytest.raises(AudioError):
            plan(body, declared=MP3, declared_rate=24000, target=MP3, target_rate=24000)


def test_localai_wav_for_pcm_is_just_its_samples() -> None:
    """WAV at the right rate asked for as pcm: the header goes, the samples stay as they are."""
    pcm = tone(24000, 0.1)
    result = normalize(
        write_wav(pcm), declared=PCM, declared_rate=24000, target=PCM, target_rate=24000
    )
    assert result.content == pcm.samples


def test_localai_wav_at_another_rate_for_pcm() -> None:
    """A 16 kHz WAV labelled pcm is read at its own rate, not the declared 24 kHz."""
    result = normalize(
        write_wav(tone(16000, 0.5)),
        declared=PCM,
        declared_rate=24000,
        target=PCM,
        target_rate=24000,
    )
    assert len(result.content) == pytest.approx(2 * 12000, abs=4)


def test_piper_pcm_at_22050_is_resampled() -> None:
    """openedai-speech's pcm is 22.05 kHz: resampled to 24 kHz, same length."""
    body = tone(22050, 0.5).samples
    result = normalize(body, declared=PCM, declared_rate=22050, target=PCM, target_rate=24000)
    assert result.transcoded
    assert len(result.content) == pytest.approx(2 * 12000, abs=4)
    assert result.duration == pytest.approx(0.5, abs=0.001)


@needs_ffmpeg
def test_openai_edge_tts_aac_in_mp4_becomes_adts() -> None:
    """aac inside MP4 is decoded (edit list honoured) and re-encoded as the raw ADTS asked for."""
    body = by_ffmpeg("mp4")
    result = normalize(body, declared=AAC, declared_rate=24000, target=AAC, target_rate=24000)
    assert result.transcoded
    assert result.source_format is AAC
    assert result.duration == pytest.approx(CLIP_SECONDS, abs=TOLERANCE)
    judged = judge(result.content, AAC, 24000)
    assert (judged.format_name, judged.codec, judged.channels) == ("aac", "aac", 1)


@needs_ffmpeg
def test_mu_law_wav_is_decoded_by_ffmpeg() -> None:
    """A WAV of compressed samples is not plain PCM, but it is still audio."""
    body = ffmpeg_encode(tone(8000, 0.5), "-c:a", "pcm_mulaw", "-f", "wav", "-")
    result = normalize(body, declared=WAV, declared_rate=8000, target=PCM, target_rate=8000)
    assert result.source_format is WAV
    assert result.duration == pytest.approx(0.5, abs=0.001)


# -- not audio -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "declared", "message"),
    [
        (b"", MP3, "empty"),
        (b"", PCM, "empty"),
        (b'{"detail": "Voice af_nope not found"}', MP3, "text error"),
        (b'{"detail": "Voice af_nope not found"}', PCM, "text error"),
        (b"<html><body><h1>502 Bad Gateway</h1></body></html>", WAV, "text error"),
        (bytes(range(256)) * 4, MP3, "no recognisable audio header"),
        (b"\x01\x02\x03", PCM, "odd length"),
    ],
)
def test_non_audio_raises_audio_error(body: bytes, declared: AudioFormat, message: str) -> None:
    """Empty, JSON, HTML and garbage bodies raise AudioError (and the client fails over)."""
    with pytest.raises(AudioError, match=message):
        normalize(body, declared=declared, declared_rate=24000, target=MP3, target_rate=24000)


def test_error_excerpt_masks_keys() -> None:
    """An error body that echoes an API key does not put it into the exception."""
    body = b'{"error": "Incorrect API key provided: sk-proj-abcdefghijklmnop"}'
    with pytest.raises(AudioError) as caught:
        normalize(body, declared=MP3, declared_rate=24000, target=MP3, target_rate=24000)
    assert "abcdefghijklmnop" not in str(caught.value)
    assert "Incorrect API key" in str(caught.value)


@pytest.mark.parametrize("fmt", [MP3, OPUS, AAC, FLAC, WAV])
@pytest.mark.parametrize("keep", [0.5, 0.05])
def test_cut_off_containers_raise(fmt: AudioFormat, keep: float) -> None:
    """A body that ends mid-frame, mid-page or short of its declared size is not a clip."""
    body = ours(fmt)
    cut = body[: int(len(body) * keep)]
    for target in (fmt, PCM):
        with pytest.raises(AudioError):
            normalize(cut, declared=fmt, declared_rate=24000, target=target, target_rate=24000)


@needs_ffmpeg
def test_cut_off_mp4_raises() -> None:
    """An MP4 without its index cannot be read."""
    body = by_ffmpeg("mp4")
    with pytest.raises(AudioError):
        normalize(
            body[: len(body) // 2], declared=AAC, declared_rate=24000, target=MP3, target_rate=24000
        )


def test_flac_without_frames_raises() -> None:
    """A FLAC header with no audio frames after it holds no samples."""
    body = ours(FLAC)
    header_only = body[: 8 + 34]
    with pytest.raises(AudioError):
        normalize(header_only, declared=FLAC, declared_rate=24000, target=MP3, target_rate=24000)


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=1024), st.sampled_from(list(AudioFormat)))
def test_garbage_raises_only_audio_error(data: bytes, declared: AudioFormat) -> None:
    """Random bytes under any label: a result or AudioError, never anything else."""
    with contextlib.suppress(AudioError):
        normalize(data, declared=declared, declared_rate=24000, target=MP3, target_rate=24000)


# -- segments and probing ------------------------------------------------------------------


def test_segments_join_as_pcm_and_encode_once() -> None:
    """Segments from different servers and formats decode to one rate and encode once."""
    parts = [ours(MP3), write_wav(tone(22050, 0.5)), tone(16000, 0.25).samples]
    labels = [MP3, WAV, PCM]
    rates = [24000, 22050, 16000]
    pcm = [
        decode_to_pcm(body, declared=label, declared_rate=rate, target_rate=24000)
        for body, label, rate in zip(parts, labels, rates, strict=True)
    ]
    joined = PcmAudio(b"".join(p.samples for p in pcm), 24000)
    assert joined.duration == pytest.approx(CLIP_SECONDS + 0.75, abs=0.002)
    body = encode_pcm(joined, MP3)
    assert probe(body).duration == pytest.approx(joined.duration, abs=0.001)


def test_encode_pcm_moves_opus_to_an_allowed_rate() -> None:
    """Opus cannot run at 22.05 kHz: it is written at 24 kHz, the nearest allowed above."""
    body = encode_pcm(tone(22050, 0.2), OPUS)
    result = probe(body)
    assert result[:3] == (OPUS, 24000, 1)
    assert result.duration == pytest.approx(0.2, abs=0.001)


@pytest.mark.parametrize("fmt", list(AudioFormat))
def test_probe_reads_headers(fmt: AudioFormat) -> None:
    """probe() says what each body is, at what rate, how many channels and how long."""
    result = probe(ours(fmt), declared=PCM if fmt is PCM else None)
    assert (result.format, result.sample_rate, result.channels) == (fmt, 24000, 1)
    expected = 25 * 1024 / 24000 if fmt is AAC else CLIP_SECONDS
    assert result.duration == pytest.approx(expected, abs=0.001)


@needs_ffmpeg
def test_probe_of_mp4_decodes() -> None:
    """MP4 has no cheap header path: probe decodes it and honours the edit list."""
    result = probe(by_ffmpeg("mp4"))
    assert (result.format, result.sample_rate, result.channels) == (AAC, 24000, 1)
    assert result.duration == pytest.approx(CLIP_SECONDS, abs=TOLERANCE)


def test_probe_refuses_headerless_bytes_unless_told_pcm() -> None:
    """Raw PCM is only PCM because the caller says so."""
    with pytest.raises(AudioError, match=r"declared=AudioFormat\.PCM"):
        probe(tone(24000, 0.1).samples)


@needs_ffmpeg
def test_probe_of_ogg_vorbis_needs_a_name() -> None:
    """Ogg Vorbis is none of the six formats: probe names it only when told what to call it."""
    body = ffmpeg_encode(tone(24000, 0.5), "-c:a", "libvorbis", "-f", "ogg", "-")
    with pytest.raises(AudioError, match="none of the six formats"):
        probe(body)
    assert probe(body, declared=OPUS)[:3] == (OPUS, 24000, 1)


@needs_ffmpeg
def test_ogg_vorbis_is_still_decoded() -> None:
    """An Ogg that holds Vorbis is none of the six formats but is audio: it is converted."""
    body = ffmpeg_encode(tone(24000, 0.5), "-c:a", "libvorbis", "-f", "ogg", "-")
    result = normalize(body, declared=OPUS, declared_rate=24000, target=MP3, target_rate=24000)
    assert result.source_format is OPUS  # the label: the best name there is for it
    assert result.duration == pytest.approx(0.5, abs=TOLERANCE)


@pytest.mark.parametrize("target_rate", [24000, 16000, 8000])
def test_mono_opus_passes_through_whatever_rate_its_head_records(target_rate: int) -> None:
    """Opus decodes at 48 kHz whatever OpusHead says (RFC 7845 §5.1): no lossy re-encode."""
    body = encode_pcm(tone(48000, 0.3), OPUS)
    assert probe(body).sample_rate == 48000
    result = normalize(
        body, declared=OPUS, declared_rate=48000, target=OPUS, target_rate=target_rate
    )
    assert result.content is body
    assert not result.transcoded
    assert not result.notes
    # The rate the caller configured, which any Opus decoder outputs natively.
    assert (result.sample_rate, result.source_rate) == (target_rate, 48000)
    assert result.duration == pytest.approx(0.3, abs=0.001)


@needs_ffmpeg
def test_stereo_opus_is_re_encoded_as_mono() -> None:
    """Mono is the one thing an Opus stream must have to pass through."""
    stereo = interleave(tone(24000, 0.3), tone(24000, 0.3, freq=660))
    body = ffmpeg_encode(stereo, "-c:a", "libopus", "-f", "ogg", "-")
    result = normalize(body, declared=OPUS, declared_rate=24000, target=OPUS, target_rate=24000)
    assert result.transcoded
    assert probe(result.content)[:3] == (OPUS, 24000, 1)
    assert result.notes == ("transcoded opus 24000 Hz stereo -> opus 24000 Hz",)


def _wav_with(tag: int, channels: int, rate: int, bits: int, data: bytes) -> bytes:
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * channels * bits // 8 % 2**32, 0, bits)
    return (
        b"RIFF\xff\xff\xff\xffWAVEfmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", len(data))
        + data
    )


def test_wav_of_an_unknown_encoding_raises() -> None:
    """A WAV format tag that no decoder knows is not usable audio."""
    body = _wav_with(0x1234, 1, 8000, 16, bytes(100))
    with pytest.raises(AudioError, match="no decoder"):
        normalize(body, declared=WAV, declared_rate=8000, target=MP3, target_rate=8000)


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from([1, 3, 6, 7, 0x1234]),
    st.sampled_from([0, 1, 2, 6, 65, 65535]),
    st.sampled_from([0, 1, 8000, 24000, 2**31, 2**32 - 1]),
    st.sampled_from([0, 8, 12, 16, 24, 32, 64]),
    st.binary(max_size=64),
)
def test_nonsense_wav_headers_raise_only_audio_error(
    tag: int, channels: int, rate: int, bits: int, data: bytes
) -> None:
    """Absurd channel counts, rates and widths: a result or AudioError, never a crash."""
    with contextlib.suppress(AudioError):
        normalize(
            _wav_with(tag, channels, rate, bits, data),
            declared=WAV,
            declared_rate=24000,
            target=MP3,
            target_rate=24000,
        )
