"""How fast the audio layer is: `python bench/audio.py`.

Prints, from one 30 s source at 24 kHz (espeak-ng speech when installed, else a synthetic
voice-like signal):

- transcode speed for each target format, as a multiple of real time on one core
  (the goal: pcm -> mp3 at 100x or more);
- what `normalize` costs when nothing needs to change (pass-through, headers only) against
  what each transcode costs.
"""

from __future__ import annotations

import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable
from pathlib import Path

# Runs from a checkout too, without `pip install -e .`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from resilient_tts._audio import (
    AudioFormat,
    PcmAudio,
    decode_to_pcm,
    encode_pcm,
    normalize,
)

RATE = 24_000
SECONDS = 30.0
GOAL = 100  # pcm -> mp3, times real time
_TEXT = (
    "Resilient text to speech gives every app failover across many servers. Whichever "
    "server answered, the caller gets exactly the format it asked for, at its sample rate. "
)


def source() -> tuple[PcmAudio, str]:
    """30 s of mono s16 audio at 24 kHz, and what it is."""
    espeak = shutil.which("espeak-ng")
    if espeak is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "speech.wav"
            subprocess.run([espeak, "-w", str(path), _TEXT * 4], check=True, capture_output=True)
            pcm = decode_to_pcm(
                path.read_bytes(), declared=AudioFormat.WAV, declared_rate=22050, target_rate=RATE
            )
        return _exactly(pcm, SECONDS), "espeak-ng speech"
    return _synthetic(), "synthetic voice-like signal (espeak-ng not installed)"


def _exactly(pcm: PcmAudio, seconds: float) -> PcmAudio:
    """`pcm` looped or cut to `seconds`."""
    wanted = 2 * round(seconds * pcm.sample_rate)
    repeats = -(-wanted // len(pcm.samples))
    return PcmAudio((pcm.samples * repeats)[:wanted], pcm.sample_rate)


def _synthetic() -> PcmAudio:
    """A 150 Hz buzz with harmonics, syllable-rate amplitude modulation and a pitch glide."""
    samples = array("h")
    for n in range(round(SECONDS * RATE)):
        t = n / RATE
        pitch = 150 + 30 * math.sin(2 * math.pi * 0.5 * t)
        envelope = 0.5 + 0.5 * math.sin(2 * math.pi * 4 * t)
        value = sum(math.sin(2 * math.pi * pitch * k * t) / k for k in range(1, 6))
        samples.append(round(6000 * envelope * value))
    return PcmAudio(samples.tobytes(), RATE)


def best_of(runs: int, action: Callable[[], object]) -> tuple[float, float]:
    """The fastest of `runs` timings in seconds: (wall clock, CPU time of this process).

    On a shared machine the CPU time is the fairer "one core" figure: the wall clock also
    counts time spent waiting for the core.
    """
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        action()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus)


def median_of(runs: int, action: Callable[[], object]) -> float:
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def main() -> None:
    pcm, what = source()
    print(f"source: {pcm.duration:.1f} s of {what}, s16 mono at {pcm.sample_rate} Hz\n")

    print("transcode from raw pcm at 24 kHz (normalize, best of 3):")
    print(f"  {'target':<7}{'wall':>10}{'cpu':>10}{'speed (cpu)':>13}{'size':>10}")
    transcode_ms: dict[AudioFormat, float] = {}
    speed: dict[AudioFormat, float] = {}
    for target in AudioFormat:
        if target is AudioFormat.PCM:
            continue  # pcm -> pcm at the same rate is the pass-through below

        def run(target: AudioFormat = target) -> object:
            return normalize(
                pcm.samples,
                declared=AudioFormat.PCM,
                declared_rate=RATE,
                target=target,
                target_rate=RATE,
            )

        wall, cpu = best_of(3, run)
        transcode_ms[target] = wall * 1000
        speed[target] = pcm.duration / max(cpu, 1e-6)
        size = len(encode_pcm(pcm, target))
        print(
            f"  {target.value:<7}{wall * 1000:>7.1f} ms{cpu * 1000:>7.1f} ms"
            f"{speed[target]:>11.0f} x{size / 1024:>6.0f} KiB"
        )
    verdict = "met" if speed[AudioFormat.MP3] >= GOAL else "NOT met"
    print(f"  goal pcm -> mp3 >= {GOAL}x real time on one core: {verdict}")

    wall, _ = best_of(
        3,
        lambda: normalize(
            pcm.samples,
            declared=AudioFormat.PCM,
            declared_rate=22050,
            target=AudioFormat.PCM,
            target_rate=RATE,
        ),
    )
    print(f"  pcm 22050 -> 24000 Hz (resample only): {wall * 1000:.1f} ms")

    print("\nnormalize when nothing changes (pass-through, median of 200) vs transcoding:")
    print(f"  {'format':<7}{'pass-through':>14}{'pcm->format':>14}")
    for fmt in AudioFormat:
        body = encode_pcm(pcm, fmt)

        def passthrough(fmt: AudioFormat = fmt, body: bytes = body) -> object:
            result = normalize(body, declared=fmt, declared_rate=RATE, target=fmt, target_rate=RATE)
            assert result.content is body
            return result

        micros = median_of(200, passthrough) * 1e6
        transcode = transcode_ms.get(fmt)
        shown = "-" if transcode is None else f"{transcode:.1f} ms"
        print(f"  {fmt.value:<7}{micros:>11.0f} us{shown:>14}")


if __name__ == "__main__":
    main()
