"""SPEC §6 through the client, over real loopback servers: whichever deployment answered, the
caller gets the format and sample rate it asked for, mono, as long as what the server sent.

Every output is judged by Debian's ffprobe (`tests/audio/audio_support.judge`), not by our own
decoder: codec, sample rate, channels == 1, and duration within 20 ms of the source as ffprobe
hears it. The one allowance: an aac output encoded here is ADTS, which cannot tell a decoder
to drop the encoder's 1024 priming samples or the padding of its last frame, so it decodes
up to 2047 samples longer (`adts_duration`; see `resilient_tts/_audio/_codec.py`).

Time: ffprobe costs about 0.1 s a run and each deployment about 50 ms to set up, so the full
6 x 6 matrix (at the default 24 kHz and a configured 16 kHz) runs under asyncio with one
deployment per source format, and trio gets a Latin square of it (every format once on each
side); trio also runs the 22.05 kHz servers and the real espeak-ng speech. Sources are
encoded once per process (the fake server's cache) and judged once (`heard_seconds`).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import AsyncIterator
from typing import Any, Literal

import pytest

from resilient_tts import AllDeploymentsFailedError, FailureKind, SpeechClient, SpeechResponse
from resilient_tts._audio import OPUS_RATES, AudioFormat, encodable_rate
from resilient_tts.testing import FakeSpeechServer, Fault
from resilient_tts.testing.__main__ import parse_fault
from tests.audio.audio_support import (
    TOLERANCE,
    adts_duration,
    judge,
    needs_espeak,
    needs_ffmpeg,
    opus_input_rate,
    speech,
    tone,
)
from tests.helpers import client_for

pytestmark = [pytest.mark.anyio, needs_ffmpeg]

MP3, OPUS, AAC, FLAC, WAV, PCM = (
    AudioFormat.MP3,
    AudioFormat.OPUS,
    AudioFormat.AAC,
    AudioFormat.FLAC,
    AudioFormat.WAV,
    AudioFormat.PCM,
)
FORMATS = list(AudioFormat)
# 101 characters: the fake server speaks 10 ms per character, so 1.01 s, which leaves every
# codec a partial last frame to flush.
TEXT = ("Whichever server answers, the caller hears exactly the format it asked for. " * 2)[:101]

# What ffprobe calls each target: (demuxer, codec).
EXPECTED = {
    MP3: ("mp3", "mp3"),
    OPUS: ("ogg", "opus"),
    AAC: ("aac", "aac"),  # the "aac" demuxer is ADTS, not MP4
    FLAC: ("flac", "flac"),
    WAV: ("wav", "pcm_s16le"),
    PCM: ("s16le", "pcm_s16le"),
}

MPEG = "audio/mpeg"
# The full matrix runs under asyncio; trio runs a share of it (every code path is the same
# but the transport: aiohttp under asyncio, httpx2 under trio).
ASYNCIO_ONLY = pytest.mark.parametrize("anyio_backend", ["asyncio"])
TRIO_ONLY = pytest.mark.parametrize("anyio_backend", ["trio"])


def latin_square(shift: int = 1) -> list[tuple[AudioFormat, AudioFormat]]:
    """Six (source, target) pairs: every format once as a source and once as a target."""
    return [(source, FORMATS[(i + shift) % 6]) for i, source in enumerate(FORMATS)]


def pair_id(pair: tuple[AudioFormat, AudioFormat]) -> str:
    return f"{pair[0]}-to-{pair[1]}"


@functools.cache
def heard_seconds(body: bytes, fmt: AudioFormat, rate: int) -> float:
    """How long a source body is, as the independent decoder hears it."""
    return judge(body, fmt, rate).duration


@contextlib.asynccontextmanager
async def native(
    source: AudioFormat,
    *,
    server_rate: int = 24000,
    clip: bytes | None = None,
    **settings: Any,
) -> AsyncIterator[tuple[FakeSpeechServer, SpeechClient]]:
    """A server that produces only `source` at `server_rate`, and a client whose deployment
    says so (``formats=[source]``, ``sample_rate=server_rate``)."""
    server = FakeSpeechServer(
        name=f"{source}-only", formats=(source,), sample_rate=server_rate, clip=clip
    )
    options = {"formats": [source.value], "sample_rate": server_rate}
    async with server, client_for([server], deployment_options=options, **settings) as client:
        yield server, client


async def ask(client: SpeechClient, target: AudioFormat, text: str = TEXT) -> SpeechResponse:
    return await client.audio.speech.create(
        model="kokoro", voice="alloy", input=text, response_format=target.value
    )


def check_output(
    result: SpeechResponse,
    target: AudioFormat,
    rate: int,
    *,
    source_seconds: float,
    transcoded: bool,
) -> None:
    """The caller got `target`, mono, at ``encodable_rate(target, rate)``, as long as the
    source, by ffprobe; and the result's metadata says the same."""
    written = encodable_rate(target, rate)
    assert (result.response_format, result.sample_rate) == (target, written)
    judged = judge(result.content, target, written)
    assert (judged.format_name, judged.codec) == EXPECTED[target]
    assert judged.channels == 1
    if target is OPUS:
        assert judged.sample_rate == 48000  # every Opus decoder runs at 48 kHz
        if transcoded:
            assert opus_input_rate(result.content) == written
    else:
        assert judged.sample_rate == written
    if target is AAC and transcoded:
        # ADTS priming and last-frame padding (module docstring); the result's own duration
        # is the audio's length without them.
        assert judged.duration == pytest.approx(
            adts_duration(source_seconds, written), abs=TOLERANCE
        )
        assert result.duration == pytest.approx(source_seconds, abs=TOLERANCE)
    else:
        assert judged.duration == pytest.approx(source_seconds, abs=TOLERANCE)
        assert result.duration == pytest.approx(judged.duration, abs=TOLERANCE)


async def run_cases(
    source: AudioFormat,
    targets: list[AudioFormat],
    *,
    server_rate: int = 24000,
    rate: int = 24000,
    clip: bytes | None = None,
    **settings: Any,
) -> None:
    """Ask a `source`-only deployment for each of `targets`; check what it was asked, what
    came back, and what each attempt record says was done. Reports every failing target."""
    async with native(source, server_rate=server_rate, clip=clip, **settings) as (server, client):
        results = [(target, await ask(client, target)) for target in targets]
        sent = server.audio(source, TEXT)
    assert [r.params["response_format"] for r in server.requests] == [source] * len(targets)
    source_seconds = heard_seconds(sent, source, server_rate)
    failures = []
    for target, result in results:
        try:
            check_case(result, source, target, server_rate, rate, sent, source_seconds)
        except AssertionError as exc:
            failures.append(f"{source} at {server_rate} Hz -> {target} at {rate} Hz: {exc}")
    assert not failures, "\n".join(failures)


def check_case(
    result: SpeechResponse,
    source: AudioFormat,
    target: AudioFormat,
    server_rate: int,
    rate: int,
    sent: bytes,
    source_seconds: float,
) -> None:
    written = encodable_rate(target, rate)
    # Mono Opus passes through at any rate its OpusHead records (RFC 7845 §5.1).
    passed = source is target and (server_rate == written or target is OPUS)
    expected_notes: list[str] = []
    if source is not target:
        expected_notes.append(f"asked for {source}, to be converted to {target}")
    if passed:
        assert result.content == sent
    else:
        # The fake server writes opus at 48 kHz when its own rate is not one Opus takes.
        source_rate = 48000 if source is OPUS and server_rate not in OPUS_RATES else server_rate
        expected_notes.append(f"transcoded {source} {source_rate} Hz -> {target} {written} Hz")
    (attempt,) = result.attempts
    assert attempt.adaptations == tuple(expected_notes)
    check_output(result, target, rate, source_seconds=source_seconds, transcoded=not passed)


# -- the matrix ---------------------------------------------------------------------------


@ASYNCIO_ONLY
@pytest.mark.parametrize("rate", [24000, 16000])
@pytest.mark.parametrize("source", FORMATS)
async def test_every_target_from_each_source(source: AudioFormat, rate: int) -> None:
    """A 24 kHz deployment that only makes `source`; the caller asks for every format at the
    default 24 kHz or at a configured 16 kHz (`sample_rate=`): the full 6 x 6 matrix, twice."""
    await run_cases(source, FORMATS, rate=rate, sample_rate=rate)


@TRIO_ONLY
@pytest.mark.parametrize("rate", [24000, 16000])
@pytest.mark.parametrize(("source", "target"), latin_square(), ids=pair_id)
async def test_matrix_square_under_trio(
    source: AudioFormat, target: AudioFormat, rate: int
) -> None:
    """Six cells of the matrix, every format once on each side, under trio."""
    await run_cases(source, [target], rate=rate, sample_rate=rate)


@pytest.mark.parametrize(
    ("anyio_backend", "server_rate"),
    [("asyncio", 22050), ("asyncio", 44100), ("trio", 22050)],
)
@pytest.mark.parametrize("source", FORMATS)
async def test_servers_at_other_native_rates(source: AudioFormat, server_rate: int) -> None:
    """Servers at 22.05 kHz (openedai-speech's piper) and 44.1 kHz come out at 24 kHz: the
    same format resampled (not passed through), and another format."""
    other = FORMATS[(FORMATS.index(source) + 2) % 6]
    await run_cases(source, [source, other], server_rate=server_rate)


@ASYNCIO_ONLY
async def test_sample_rate_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """RESILIENT_TTS_SAMPLE_RATE sets the output rate of every format."""
    monkeypatch.setenv("RESILIENT_TTS_SAMPLE_RATE", "16000")
    await run_cases(WAV, [MP3, OPUS, PCM], rate=16000)


@needs_espeak
@pytest.mark.parametrize(("source", "target"), latin_square(3), ids=pair_id)
async def test_real_speech(source: AudioFormat, target: AudioFormat) -> None:
    """espeak-ng's 22.05 kHz speech, served in each format, comes out right at 24 kHz."""
    await run_cases(source, [target], server_rate=22050, clip=speech().samples)


# -- what each deployment is asked for ----------------------------------------------------


async def test_deployment_that_declares_only_wav_is_asked_wav_and_transcoded() -> None:
    """Orpheus/chatterbox speak only WAV: asked wav, transcoded to the mp3 the caller wants."""
    async with native(WAV) as (server, client):
        result = await ask(client, MP3)
    assert server.requests[0].params["response_format"] == "wav"
    assert result.attempts[0].adaptations == (
        "asked for wav, to be converted to mp3",
        "transcoded wav 24000 Hz -> mp3 24000 Hz",
    )
    check_output(result, MP3, 24000, source_seconds=1.01, transcoded=True)


async def test_best_lossless_format_is_asked_for() -> None:
    """A deployment without the requested format is asked for its best lossless one."""
    server = FakeSpeechServer(name="pcm-and-flac", formats=("mp3", "flac", "pcm"))
    options = {"formats": ["mp3", "flac", "pcm"]}
    async with server, client_for([server], deployment_options=options) as client:
        result = await ask(client, WAV)
    assert server.requests[0].params["response_format"] == "pcm"  # before flac: no decode
    assert result.attempts[0].adaptations == (
        "asked for pcm, to be converted to wav",
        "transcoded pcm 24000 Hz -> wav 24000 Hz",
    )
    check_output(result, WAV, 24000, source_seconds=1.01, transcoded=True)


async def test_piper_pcm_at_22050_is_resampled_to_24000() -> None:
    """openedai-speech's pcm is 22.05 kHz: `sample_rate=22050` on the deployment says so."""
    async with native(PCM, server_rate=22050) as (server, client):
        result = await ask(client, PCM)
    assert server.requests[0].params["response_format"] == "pcm"
    assert result.attempts[0].adaptations == ("transcoded pcm 22050 Hz -> pcm 24000 Hz",)
    assert len(result.content) == pytest.approx(2 * round(1.01 * 24000), abs=8)
    check_output(result, PCM, 24000, source_seconds=1.01, transcoded=True)


async def test_openai_edge_tts_broken_pcm_is_avoided_by_not_declaring_it() -> None:
    """openai-edge-tts's pcm is broken: a deployment that leaves pcm out of `formats` is
    asked for wav instead, and the caller still gets pcm."""
    declared = ["mp3", "opus", "aac", "flac", "wav"]
    server = FakeSpeechServer(name="edge", formats=declared)
    async with server, client_for([server], deployment_options={"formats": declared}) as client:
        result = await ask(client, PCM)
    assert server.requests[0].params["response_format"] == "wav"
    assert result.content == server.audio("wav", TEXT)[44:]  # the samples, without the header
    assert result.attempts[0].adaptations == (
        "asked for wav, to be converted to pcm",
        "transcoded wav 24000 Hz -> pcm 24000 Hz",
    )


@pytest.mark.parametrize("fmt", FORMATS)
async def test_pass_through_returns_the_servers_bytes(fmt: AudioFormat) -> None:
    """Already the format, rate and mono asked for: the server's bytes, untouched, and no
    adaptation recorded."""
    async with native(fmt) as (server, client):
        result = await ask(client, fmt)
        sent = server.audio(fmt, TEXT)
    assert result.content == sent
    assert result.attempts[0].adaptations == ()
    assert (result.response_format, result.sample_rate) == (fmt, 24000)


async def test_opus_passes_through_whatever_its_head_says() -> None:
    """A 44.1 kHz server writes Opus fed at 48 kHz; a 24 kHz caller gets those bytes as they
    are (Opus decodes at 48 kHz anyway; RFC 7845 §5.1), reported at 24 kHz."""
    async with native(OPUS, server_rate=44100) as (server, client):
        result = await ask(client, OPUS)
        sent = server.audio(OPUS, TEXT)
    assert opus_input_rate(sent) == 48000
    assert result.content == sent
    assert result.sample_rate == 24000
    assert result.attempts[0].adaptations == ()


# -- mislabelled bodies (SPEC §6) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "asked", "label"),
    [
        (Fault.wrong_format("wav", content_type="audio/mpeg"), MP3, "wav"),
        (Fault.wrong_format("mp3", content_type="audio/aac"), AAC, "mp3"),
        (Fault.wrong_format("wav", content_type="audio/pcm"), PCM, "wav"),
        (Fault.wrong_format("mp3", content_type="audio/flac"), FLAC, "mp3"),
        (Fault.wrong_format("aac", content_type="audio/aac", mp4=True), AAC, "aac in mp4"),
    ],
    ids=[
        "wav-sent-as-mp3",
        "mp3-sent-as-aac",
        "localai-wav-for-pcm",
        "kokoros-mp3-for-flac",
        "openai-edge-tts-mp4-for-aac",
    ],
)
async def test_mislabelled_bodies_come_out_right(
    fault: Fault, asked: AudioFormat, label: str
) -> None:
    """The bytes decide what a body is, not the label: the caller still gets what it asked,
    and the attempt says what the deployment really sent."""
    async with FakeSpeechServer(name="liar", fault=fault) as server, client_for([server]) as client:
        result = await ask(client, asked)
    assert server.requests[0].params["response_format"] == asked
    assert result.attempts[0].adaptations == (
        f"the deployment sent {label}, not the {asked} it was asked for",
        f"transcoded {label} 24000 Hz -> {asked} 24000 Hz",
    )
    if asked is PCM:
        assert not result.content.startswith(b"RIFF")  # LocalAI's header is gone
    seconds = 1.01
    if label == "aac in mp4":
        # The MP4's edit list hides the encoder's priming but not the padding of its last
        # 1024-sample frame: every decoder (ffprobe's too) plays it.
        seconds = math.ceil(round(1.01 * 24000) / 1024) * 1024 / 24000
    check_output(result, asked, 24000, source_seconds=seconds, transcoded=True)


# -- not audio ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["garbage", "empty", "json"])
async def test_body_labelled_audio_that_is_not_fails_over(
    kind: Literal["garbage", "empty", "json"],
) -> None:
    """A 200 'audio/mpeg' body no decoder can read is a deployment failure: the next one
    serves, and the attempt says why."""
    async with (
        FakeSpeechServer(name="primary", fault=Fault.not_audio(kind, content_type=MPEG)) as a,
        FakeSpeechServer(name="backup") as b,
        client_for([a, b]) as client,
    ):
        result = await ask(client, MP3)
    first, second = result.attempts
    assert (first.deployment, first.kind) == ("primary", FailureKind.NOT_AUDIO)
    assert (second.deployment, result.deployment) == ("backup", "backup")
    if kind == "garbage":
        assert "no recognisable audio header" in (first.error or "")
    assert result.content == b.audio("mp3", TEXT)


@pytest.mark.parametrize("fmt", [MP3, OPUS, AAC, FLAC, WAV])
async def test_well_framed_but_truncated_audio_fails_over(fmt: AudioFormat) -> None:
    """A server whose encoder died mid-clip but which ended its response properly (speaches
    fails after the 200 went out): only the container shows the cut, and that is enough."""
    async with (
        FakeSpeechServer(name="primary", fault=Fault.truncated(1500), chunked=True) as a,
        FakeSpeechServer(name="backup") as b,
        client_for([a, b]) as client,
    ):
        result = await ask(client, fmt)
    first, _ = result.attempts
    assert (first.kind, result.deployment) == (FailureKind.NOT_AUDIO, "backup")
    assert "cut short" in (first.error or "")
    assert result.content == b.audio(fmt, TEXT)


async def test_only_garbage_everywhere_fails_with_every_attempt() -> None:
    """When no deployment sends usable audio the caller gets an error, never garbage."""
    garbage = Fault.not_audio("garbage")
    async with (
        FakeSpeechServer(name="a", fault=garbage) as a,
        FakeSpeechServer(name="b", fault=garbage) as b,
        client_for([a, b]) as client,
    ):
        with pytest.raises(AllDeploymentsFailedError) as caught:
            await ask(client, PCM)
    assert [x.kind for x in caught.value.attempts] == [FailureKind.NOT_AUDIO] * 2


# -- the fake server's audio options ------------------------------------------------------


async def test_server_serves_a_given_clip() -> None:
    """`clip=` is served (encoded as asked) instead of the tone, whatever the input."""
    clip = tone(16000, 0.25).samples
    async with FakeSpeechServer(sample_rate=16000, clip=clip) as server:
        assert server.audio("pcm", "anything at all") == clip
        assert judge(server.audio("flac", "x"), FLAC, 16000).duration == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: FakeSpeechServer(clip=b"\x00"), "clip"),
        (lambda: FakeSpeechServer(clip=b""), "clip"),
        (lambda: Fault.wrong_format("mp3", mp4=True), "only aac"),
        (lambda: Fault.truncated(-1), "after_bytes"),
    ],
)
def test_audio_options_reject_nonsense(build: Any, message: str) -> None:
    """A clip that is not s16 PCM, or MP4 around anything but aac, fails at construction."""
    with pytest.raises(ValueError, match=message):
        build()


def test_audio_faults_from_the_command_line() -> None:
    """``python -m resilient_tts.testing --fault ...`` knows the audio faults too."""
    assert parse_fault("truncated:1500") == Fault.truncated(1500)
    assert parse_fault("not-audio:garbage") == Fault.not_audio("garbage")


def test_server_audio_rejects_unknown_formats() -> None:
    """`audio()` names the formats it knows."""
    with pytest.raises(ValueError, match="mp3, opus"):
        FakeSpeechServer().audio("ogg", TEXT)
