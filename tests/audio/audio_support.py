"""Test helpers: source audio, and an independent judge (Debian's ffprobe/ffmpeg, SPEC §6).

Plain Python (no numpy: it is not a test dependency). FFmpeg here is the system binary, a
different build from the one bundled in PyAV, so the judge does not share our decoder.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import shutil
import subprocess
import tempfile
from array import array
from dataclasses import dataclass
from pathlib import Path

import pytest

from resilient_tts._audio import AudioFormat, PcmAudio, decode_to_pcm, encode_pcm

FFPROBE = shutil.which("ffprobe")
FFMPEG = shutil.which("ffmpeg")
ESPEAK = shutil.which("espeak-ng")

needs_ffmpeg = pytest.mark.skipif(
    FFPROBE is None or FFMPEG is None,
    reason="ffprobe/ffmpeg not installed (Debian package 'ffmpeg'): the independent judge",
)
needs_espeak = pytest.mark.skipif(
    ESPEAK is None, reason="espeak-ng not installed (Debian package 'espeak-ng'): real speech"
)

# One second and a bit: the odd length leaves every codec a partial last frame to flush.
CLIP_SECONDS = 1.013
TOLERANCE = 0.020  # seconds; SPEC §6 judges duration by an independent decoder


def tone(
    rate: int, seconds: float = CLIP_SECONDS, freq: float = 440.0, amplitude: float = 0.5
) -> PcmAudio:
    """A mono sine tone."""
    step = 2 * math.pi * freq / rate
    peak = amplitude * 32767
    samples = array("h", (round(peak * math.sin(step * n)) for n in range(round(rate * seconds))))
    return PcmAudio(samples=samples.tobytes(), sample_rate=rate)


def interleave(*channels: PcmAudio) -> PcmAudio:
    """Several mono clips of one length as one multi-channel clip."""
    parts = [array("h", c.samples) for c in channels]
    out = array("h", bytes(len(channels[0].samples) * len(parts)))
    for index, part in enumerate(parts):
        out[index :: len(parts)] = part
    return PcmAudio(out.tobytes(), channels[0].sample_rate, len(parts))


def rms(pcm: PcmAudio) -> float:
    """Root mean square of the middle 80 % (away from the resampler's edges)."""
    values = array("h", pcm.samples)
    trim = len(values) // 10
    middle = values[trim : len(values) - trim]
    return math.sqrt(sum(v * v for v in middle) / max(len(middle), 1))


def zero_crossings_per_second(pcm: PcmAudio) -> float:
    values = array("h", pcm.samples)
    crossings = sum(1 for a, b in itertools.pairwise(values) if (a < 0) != (b < 0))
    return crossings / pcm.duration


@functools.cache
def speech() -> PcmAudio:
    """Real speech from espeak-ng: 22050 Hz mono."""
    assert ESPEAK is not None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        subprocess.run(
            [ESPEAK, "-w", str(path), "Hello there. Resilient speech, in every format."],
            check=True,
            capture_output=True,
        )
        body = path.read_bytes()
    return decode_to_pcm(body, declared=AudioFormat.WAV, declared_rate=22050, target_rate=22050)


@functools.cache
def ours(fmt: AudioFormat, rate: int = 24000, source: str = "tone") -> bytes:
    """A source body made by our own encoder."""
    pcm = speech() if source == "speech" else tone(rate)
    return encode_pcm(pcm, fmt)


_FFMPEG_OUTPUT = {
    AudioFormat.MP3: ["-c:a", "libmp3lame", "-b:a", "64k", "-f", "mp3"],
    AudioFormat.OPUS: ["-c:a", "libopus", "-f", "ogg"],
    AudioFormat.AAC: ["-c:a", "aac", "-f", "adts"],
    AudioFormat.FLAC: ["-c:a", "flac", "-f", "flac"],
    AudioFormat.WAV: ["-c:a", "pcm_s16le", "-f", "wav"],
}


@functools.cache
def by_ffmpeg(fmt: AudioFormat | str, rate: int = 24000) -> bytes:
    """A source body made by the ffmpeg CLI from the same tone ("mp4": AAC in an M4A file).

    Written to a pipe, so mp3 has no Info header and WAV has unknown (0xFFFFFFFF) sizes,
    as a streaming server would send them.
    """
    if fmt == "mp4":  # MP4 needs a seekable output to write its index
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "clip.m4a"
            ffmpeg_encode(tone(rate), "-c:a", "aac", str(path))
            return path.read_bytes()
    return ffmpeg_encode(tone(rate), *_FFMPEG_OUTPUT[AudioFormat(fmt)], "-")


def ffmpeg_encode(pcm: PcmAudio, *output: str) -> bytes:
    """Run the ffmpeg CLI on `pcm` with the given output options; its stdout."""
    assert FFMPEG is not None
    source = ["-f", "s16le", "-ar", str(pcm.sample_rate), "-ac", str(pcm.channels), "-i", "-"]
    return _run([FFMPEG, "-v", "error", *source, *output], pcm.samples)


def _run(command: list[str], stdin: bytes) -> bytes:
    return subprocess.run(command, input=stdin, capture_output=True, check=True).stdout


@dataclass(frozen=True)
class Judged:
    """What Debian's ffprobe and ffmpeg make of a body."""

    format_name: str  # the demuxer ffprobe chose: "mp3", "ogg", "aac" (ADTS), "flac", "wav"
    codec: str
    sample_rate: int  # the decoder's rate: always 48000 for opus
    channels: int
    duration: float  # samples the decoder gives back, over its rate
    probed_duration: float | None  # ffprobe's container duration, where it states one


def judge(body: bytes, fmt: AudioFormat, rate: int) -> Judged:
    """Probe and fully decode `body` with the system ffprobe, in one run.

    The duration sums the samples of every decoded frame, after the decoder dropped what the
    container tells it to (mp3's LAME header, Opus pre-skip and end trim). It is not
    ffprobe's ``duration`` field, which for mp3 counts those priming and padding frames.
    """
    assert FFPROBE is not None
    raw = ["-f", "s16le", "-ar", str(rate), "-ac", "1"] if fmt is AudioFormat.PCM else []
    entries = "stream=codec_name,sample_rate,channels:format=format_name,duration:frame=nb_samples"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"clip.{fmt}"
        path.write_bytes(body)
        command = [FFPROBE, "-v", "error", *raw, "-show_entries", entries, "-of", "json"]
        probed = json.loads(_run([*command, str(path)], b""))
    (stream,) = probed["streams"]
    decoder_rate = int(stream["sample_rate"])
    samples = sum(int(frame["nb_samples"]) for frame in probed.get("frames", []))
    probed_duration = probed["format"].get("duration")
    return Judged(
        format_name=probed["format"]["format_name"],
        codec=stream["codec_name"],
        sample_rate=decoder_rate,
        channels=int(stream["channels"]),
        duration=samples / decoder_rate,
        probed_duration=None if probed_duration is None else float(probed_duration),
    )


def opus_input_rate(body: bytes) -> int:
    """The encoder's input rate that an Ogg Opus file records (RFC 7845 §5.1).

    Opus always decodes at 48 kHz, so this field is the only place the rate lives.
    """
    head = body.index(b"OpusHead")
    return int.from_bytes(body[head + 12 : head + 16], "little")


def adts_duration(seconds: float, rate: int) -> float:
    """How long an ADTS file of `seconds` of audio decodes: 1024 samples of encoder priming,
    then whole 1024-sample frames. ADTS cannot tell a decoder to drop either."""
    frames = math.ceil((round(seconds * rate) + 1024) / 1024)
    return frames * 1024 / rate
