"""Rate changes are real band-limited filtering (swresample), on every path."""

from __future__ import annotations

import math

import pytest

from resilient_tts._audio import AudioFormat, PcmAudio, decode_to_pcm, encode_pcm, normalize
from resilient_tts._audio._resample import to_mono

from .audio_support import interleave, rms, tone, zero_crossings_per_second


def _decibels(after: PcmAudio, before: PcmAudio) -> float:
    ratio = rms(after) / rms(before)
    return -math.inf if ratio == 0 else 20 * math.log10(ratio)


def test_tone_above_the_new_nyquist_is_filtered_out() -> None:
    """A 10 kHz tone taken from 48 kHz to 16 kHz (Nyquist 8 kHz) is gone, not folded back."""
    source = tone(48000, 0.5, freq=10_000)
    resampled = to_mono(source, 16000)
    assert _decibels(resampled, source) < -40


def test_tone_below_the_new_nyquist_keeps_its_frequency_and_level() -> None:
    """A 1 kHz tone survives 48 kHz -> 16 kHz at its frequency and level."""
    source = tone(48000, 0.5, freq=1000)
    resampled = to_mono(source, 16000)
    assert resampled.sample_rate == 16000
    assert resampled.frames == pytest.approx(8000, abs=2)
    assert zero_crossings_per_second(resampled) == pytest.approx(2000, rel=0.01)
    assert abs(_decibels(resampled, source)) < 0.5


@pytest.mark.parametrize("source_format", [AudioFormat.PCM, AudioFormat.WAV, AudioFormat.FLAC])
def test_lossless_inputs_are_filtered_too(source_format: AudioFormat) -> None:
    """Raw PCM and WAV bodies (plain Python on the way in) still resample through swresample."""
    body = encode_pcm(tone(48000, 0.5, freq=10_000), source_format)
    out = normalize(
        body, declared=source_format, declared_rate=48000, target=AudioFormat.PCM, target_rate=16000
    )
    assert _decibels(PcmAudio(out.content, 16000), tone(48000, 0.5, freq=10_000)) < -40


def test_upsampling_keeps_frequency() -> None:
    """piper's 22.05 kHz PCM taken up to 24 kHz keeps its pitch and its length."""
    source = tone(22050, 0.5, freq=440)
    pcm = decode_to_pcm(
        source.samples, declared=AudioFormat.PCM, declared_rate=22050, target_rate=24000
    )
    assert pcm.duration == pytest.approx(0.5, abs=0.001)
    assert zero_crossings_per_second(pcm) == pytest.approx(880, rel=0.01)


def test_stereo_is_averaged_to_mono() -> None:
    """Downmixing averages the channels: identical channels keep their level."""
    left = tone(24000, 0.3, freq=500)
    both = to_mono(interleave(left, left), 24000)
    assert both.channels == 1
    assert both.samples == left.samples
    silent = PcmAudio(bytes(len(left.samples)), 24000)
    one_side = to_mono(interleave(left, silent), 24000)
    assert rms(one_side) == pytest.approx(rms(left) / 2, rel=0.01)


def test_to_mono_returns_the_same_object_when_nothing_changes() -> None:
    """No copy when the audio already is mono at the rate."""
    pcm = tone(24000, 0.1)
    assert to_mono(pcm, 24000) is pcm


def test_empty_audio_resamples_to_empty() -> None:
    """Zero samples stay zero samples (a server's empty segment)."""
    assert to_mono(PcmAudio(b"", 48000, 2), 24000) == PcmAudio(b"", 24000)
