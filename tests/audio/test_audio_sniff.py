"""Sniffing reads the bytes, never the label, and never raises."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilient_tts._audio import (
    AudioFormat,
    Container,
    looks_like_text_error,
    sniff,
    sniff_container,
    wav_header,
)
from resilient_tts._audio._sniff import id3_end

from .audio_support import by_ffmpeg, needs_ffmpeg, ours, tone


@pytest.mark.parametrize(
    ("fmt", "container"),
    [
        (AudioFormat.MP3, Container.MP3),
        (AudioFormat.OPUS, Container.OGG_OPUS),
        (AudioFormat.AAC, Container.ADTS),
        (AudioFormat.FLAC, Container.FLAC),
        (AudioFormat.WAV, Container.WAV),
    ],
)
def test_each_encoded_format_is_recognised(fmt: AudioFormat, container: Container) -> None:
    """Our own encoder's output sniffs as what it is."""
    body = ours(fmt)
    assert sniff(body) is fmt
    assert sniff_container(body) is container


def test_mp3_with_and_without_id3() -> None:
    """FFmpeg's mp3 starts with an ID3v2 tag; a bare frame sync is mp3 too."""
    body = ours(AudioFormat.MP3)
    assert body[:3] == b"ID3"
    bare = body[id3_end(body) :]
    assert bare[0] == 0xFF
    assert sniff(bare) is AudioFormat.MP3


def test_id3_tag_in_front_of_other_formats() -> None:
    """An ID3v2 tag (with a footer and padding) is skipped to whatever follows it."""
    tag = b"ID3\x04\x00\x10" + bytes([0, 0, 0, 4]) + b"TAG!" + b"3DI" + bytes(7) + bytes(5)
    assert sniff(tag + ours(AudioFormat.FLAC)) is AudioFormat.FLAC
    assert sniff(tag + ours(AudioFormat.AAC)) is AudioFormat.AAC
    assert sniff(tag) is None  # a tag alone is not audio


@needs_ffmpeg
def test_mp3_from_another_encoder_without_info_header() -> None:
    """ffmpeg writing to a pipe leaves out the Xing/Info frame."""
    body = by_ffmpeg(AudioFormat.MP3)
    assert b"Info" not in body[:256]
    assert b"Xing" not in body[:256]
    assert sniff(body) is AudioFormat.MP3


@needs_ffmpeg
def test_aac_in_mp4() -> None:
    """openai-edge-tts wraps its aac in an MP4 (M4A) file: still aac, but not ADTS."""
    body = by_ffmpeg("mp4")
    assert sniff(body) is AudioFormat.AAC
    assert sniff_container(body) is Container.MP4


def test_adts_and_mp3_frame_syncs_are_told_apart() -> None:
    """0xFFF1 (layer bits 00) is ADTS; 0xFFF3/0xFFFB (layer bits 01) is MPEG Layer III."""
    assert ours(AudioFormat.AAC)[:2] in (b"\xff\xf1", b"\xff\xf9")
    assert sniff(ours(AudioFormat.AAC)) is AudioFormat.AAC
    mp3 = ours(AudioFormat.MP3)
    assert sniff(mp3[id3_end(mp3) :]) is AudioFormat.MP3


def test_streaming_and_extensible_wav() -> None:
    """OpenAI's 0xFFFFFFFF sizes and WAVE_FORMAT_EXTENSIBLE are WAV."""
    streaming = wav_header(24000) + tone(24000, 0.01).samples
    assert streaming[4:8] == b"\xff\xff\xff\xff"
    assert sniff(streaming) is AudioFormat.WAV
    fmt = struct.pack(
        "<HHIIHHHHI16s", 0xFFFE, 1, 24000, 48000, 2, 16, 22, 16, 4, b"\x01" + bytes(15)
    )
    extensible = (
        b"RIFF"
        + struct.pack("<I", 0xFFFFFFFF)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data\xff\xff\xff\xff"
        + bytes(100)
    )
    assert sniff(extensible) is AudioFormat.WAV


def test_ogg_that_is_not_opus() -> None:
    """Ogg Vorbis is decodable Ogg but not the "opus" format."""
    page = b"OggS\x00\x02" + bytes(20) + b"\x01\x1e" + b"\x01vorbis" + bytes(22)
    assert sniff_container(page) is Container.OGG
    assert sniff(page) is None


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b'{"detail": "Voice not found"}',
        b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>",
        b"Internal Server Error",
        tone(24000, 0.05).samples,  # raw PCM has no header: "PCM as declared", not sniffable
        b"\xff\xfb",  # a frame sync with no frame
    ],
)
def test_non_audio_and_raw_pcm_sniff_as_none(body: bytes) -> None:
    """Error bodies, empty bodies and headerless PCM are not any container."""
    assert sniff(body) is None


@pytest.mark.parametrize(
    "body",
    [
        b'{"detail": "Voice not found"}',
        b'  \n{"error": {"message": "Rate limit", "type": "requests"}}',
        b"<html><head><title>503</title></head></html>",
        b"Internal Server Error",
        "Fehler: Stimme \u00fcberlastet".encode(),
    ],
)
def test_text_errors_are_recognised(body: bytes) -> None:
    """JSON, HTML and plain-text error bodies read as text."""
    assert looks_like_text_error(body)


@pytest.mark.parametrize("fmt", list(AudioFormat))
def test_audio_is_not_text(fmt: AudioFormat) -> None:
    """No audio format, raw PCM included, reads as a text error."""
    assert not looks_like_text_error(ours(fmt))
    assert not looks_like_text_error(b"")


@given(st.binary(max_size=2048))
def test_sniff_never_raises(data: bytes) -> None:
    """Any bytes at all: an answer, never an exception."""
    sniff(data)
    looks_like_text_error(data)


_MAGICS = [
    b"ID3\x03\x00\x00",
    b"RIFF",
    b"OggS",
    b"fLaC",
    b"\xff\xfb",
    b"\xff\xf1",
    b"\x00\x00\x00\x18ftyp",
]


@given(st.sampled_from(_MAGICS), st.binary(max_size=512))
def test_sniff_never_raises_behind_a_real_magic(magic: bytes, rest: bytes) -> None:
    """Truncated and garbled headers behind a real magic number do not raise either."""
    sniff(magic + rest)
