"""What each response format is and which rates it can be written at."""

from __future__ import annotations

import pytest

from resilient_tts._audio import LOSSLESS_PREFERENCE, OPUS_RATES, AudioFormat, encodable_rate


def test_formats_are_spelled_as_the_openai_api_spells_them() -> None:
    """`response_format` strings map straight onto the enum."""
    assert [f.value for f in AudioFormat] == ["mp3", "opus", "aac", "flac", "wav", "pcm"]
    assert AudioFormat("opus") is AudioFormat.OPUS
    assert f"{AudioFormat.MP3}" == "mp3"  # StrEnum: formats into URLs and bodies as is


def test_content_types() -> None:
    """Each format has the media type OpenAI sends."""
    assert AudioFormat.MP3.content_type == "audio/mpeg"
    assert AudioFormat.WAV.content_type == "audio/wav"
    assert all(f.content_type.startswith("audio/") for f in AudioFormat)


def test_lossless_preference() -> None:
    """WAV first (self-describing, plain Python), then raw PCM, then FLAC (needs a decode)."""
    assert LOSSLESS_PREFERENCE == (AudioFormat.WAV, AudioFormat.PCM, AudioFormat.FLAC)
    assert {f for f in AudioFormat if f.is_lossless} == set(LOSSLESS_PREFERENCE)


@pytest.mark.parametrize(
    ("fmt", "asked", "written"),
    [
        (AudioFormat.OPUS, 24000, 24000),
        (AudioFormat.OPUS, 22050, 24000),  # the nearest allowed rate at or above
        (AudioFormat.OPUS, 44100, 48000),
        (AudioFormat.OPUS, 96000, 48000),  # above every allowed rate: the highest
        (AudioFormat.OPUS, 7000, 8000),
        (AudioFormat.MP3, 22050, 22050),
        (AudioFormat.MP3, 96000, 48000),
        (AudioFormat.AAC, 96000, 96000),
        (AudioFormat.AAC, 20000, 22050),
        (AudioFormat.WAV, 12345, 12345),
        (AudioFormat.PCM, 22050, 22050),
        (AudioFormat.FLAC, 1_000_000, 655_350),
    ],
)
def test_encodable_rate(fmt: AudioFormat, asked: int, written: int) -> None:
    """Codecs with fixed rate sets move to the nearest allowed rate that loses no band."""
    assert encodable_rate(fmt, asked) == written


def test_opus_rates() -> None:
    """libopus runs at exactly these rates."""
    assert OPUS_RATES == (8000, 12000, 16000, 24000, 48000)


def test_rate_must_be_positive() -> None:
    """A zero rate is a programming error, not audio."""
    with pytest.raises(ValueError, match="positive"):
        encodable_rate(AudioFormat.WAV, 0)
