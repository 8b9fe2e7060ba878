"""Every source format to every target format, judged by Debian's ffprobe/ffmpeg (SPEC §6).

Whatever a server sent, the caller gets the requested codec, mono, at the requested rate,
and the clip is as long as the source (ADTS aac adds only its inherent priming and padding).
"""

from __future__ import annotations

import functools

import pytest

from resilient_tts._audio import AudioFormat, encodable_rate, normalize

from .audio_support import (
    TOLERANCE,
    Judged,
    adts_duration,
    by_ffmpeg,
    judge,
    needs_espeak,
    needs_ffmpeg,
    opus_input_rate,
    ours,
)

pytestmark = needs_ffmpeg

FORMATS = list(AudioFormat)

# What ffprobe calls each target: (demuxer, codec).
_EXPECTED = {
    AudioFormat.MP3: ("mp3", "mp3"),
    AudioFormat.OPUS: ("ogg", "opus"),
    AudioFormat.AAC: ("aac", "aac"),  # the "aac" demuxer is ADTS, not MP4
    AudioFormat.FLAC: ("flac", "flac"),
    AudioFormat.WAV: ("wav", "pcm_s16le"),
    AudioFormat.PCM: ("s16le", "pcm_s16le"),
}


@functools.cache
def _source_seconds(body: bytes, fmt: AudioFormat, rate: int) -> float:
    """How long the source is, as the independent decoder hears it."""
    return judge(body, fmt, rate).duration


def check_output(
    body: bytes, source: AudioFormat, source_rate: int, target: AudioFormat, rate: int
) -> None:
    source_seconds = _source_seconds(body, source, source_rate)
    result = normalize(
        body, declared=source, declared_rate=source_rate, target=target, target_rate=rate
    )
    written_rate = encodable_rate(target, rate)
    assert result.format is target
    assert result.sample_rate == written_rate
    judged: Judged = judge(result.content, target, written_rate)
    assert (judged.format_name, judged.codec) == _EXPECTED[target]
    assert judged.channels == 1
    if target is AudioFormat.OPUS:
        assert judged.sample_rate == 48000  # every Opus decoder runs at 48 kHz
        if source is AudioFormat.OPUS:  # mono Opus passes through at any rate (RFC 7845 §5.1)
            assert result.content is body
        else:
            assert opus_input_rate(result.content) == written_rate
    else:
        assert judged.sample_rate == written_rate
    expected = source_seconds
    if target is AudioFormat.AAC and result.transcoded:
        expected = adts_duration(source_seconds, written_rate)
    assert judged.duration == pytest.approx(expected, abs=TOLERANCE)
    if target in (AudioFormat.FLAC, AudioFormat.WAV, AudioFormat.PCM):
        assert judged.probed_duration == pytest.approx(source_seconds, abs=TOLERANCE)
    if target is not AudioFormat.AAC:
        assert result.duration == pytest.approx(judged.duration, abs=TOLERANCE)


@pytest.mark.parametrize("rate", [24000, 16000])
@pytest.mark.parametrize("target", FORMATS)
@pytest.mark.parametrize("source", FORMATS)
def test_tone_from_our_encoder(source: AudioFormat, target: AudioFormat, rate: int) -> None:
    """A 24 kHz tone in each format comes out as each format, at 24 and 16 kHz."""
    check_output(ours(source), source, 24000, target, rate)


@needs_espeak
@pytest.mark.parametrize("target", FORMATS)
@pytest.mark.parametrize("source", FORMATS)
def test_real_speech(source: AudioFormat, target: AudioFormat) -> None:
    """espeak-ng's 22.05 kHz speech, encoded as each format, comes out as each at 24 kHz."""
    check_output(ours(source, source="speech"), source, 22050, target, 24000)


_FFMPEG_SOURCES = [f for f in FORMATS if f is not AudioFormat.PCM]


@pytest.mark.parametrize("target", FORMATS)
@pytest.mark.parametrize("source", _FFMPEG_SOURCES)
def test_source_from_ffmpeg_cli(source: AudioFormat, target: AudioFormat) -> None:
    """Bodies another encoder made (mp3 without Info header, streaming WAV) convert too."""
    check_output(by_ffmpeg(source), source, 24000, target, 22050)
