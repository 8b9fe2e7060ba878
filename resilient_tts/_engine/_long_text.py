"""Long text (SPEC §5): spoken segment by segment, each with its own failover, joined as PCM.

A text longer than the smallest `max_input_chars` of its pool is spoken in segments. Each
segment is cut for the deployment that speaks it (`_segments.next_segment` with that
deployment's own limit), so a deployment that takes 4096 characters gets 4096 even when a
backup in the same pool takes only 3000; a segment that fails over to the backup is simply
cut shorter, and the next one starts where it ended. The deployment that spoke the previous
segment is tried first for the next, so the voice stays the same; a change emits
`SegmentSwitched`. Every segment is asked for in the deployment's best lossless format and
decoded to PCM at the output rate; `synthesize_long` joins them and encodes once, so no codec
priming or padding lands between segments.

All segments share the request's one deadline ("all attempts and waits included"): each
segment gets what remains of it. The retry budget counts the request once, not each segment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import anyio
import httpx2

from .._audio import AudioFormat, PcmAudio, decode_to_pcm, encodable_rate, encode_pcm
from .._config._request import SpeechRequest
from .._core._classify import FailureKind, verdict_for
from .._core._records import Attempt, SpeechSegment, Synthesized
from .._core._segments import next_segment
from .._exceptions import AudioError
from .._observe import _events as events
from ._attempt import AttemptError, DeploymentRequest, open_audio_stream
from ._failover import run_with_failover
from ._pool import LiveDeployment, LivePool

__all__ = ["SegmentAudio", "SpeechJob", "is_long", "synthesize_long", "synthesize_segment"]

# Bodies (or PCM) larger than this are decoded and encoded in a worker thread.
INLINE_CPU_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class SpeechJob:
    """What every segment of one request shares."""

    pool: LivePool
    request: SpeechRequest  # the caller's: `input` is the whole text
    http: Callable[[], httpx2.AsyncClient]
    rate: int  # the output's sample rate, which every segment's PCM is decoded to
    deadline: float  # the whole request's, on `clock`
    clock: Callable[[], float] = anyio.current_time

    @property
    def text(self) -> str:
        return self.request.input

    def segment_request(self, text: str) -> SpeechRequest:
        """The request for one segment: its text, and "wav" as the format so that
        `adapt_request` asks each deployment for its best lossless format (wav, pcm, flac)."""
        return replace(self.request, input=text, response_format="wav")

    def candidates(self, previous: LiveDeployment | None) -> tuple[LiveDeployment, ...]:
        """The pool in order, with the deployment that spoke the previous segment first."""
        deployments = self.pool.deployments
        if previous is None:
            return deployments
        return (previous, *(d for d in deployments if d is not previous))


@dataclass(frozen=True, slots=True)
class SegmentAudio:
    pcm: bytes  # s16 mono at the job's rate
    start: int
    end: int
    deployment: LiveDeployment
    attempts: tuple[Attempt, ...]

    def describe(self, index: int, rate: int) -> SpeechSegment:
        return SpeechSegment(
            index, self.start, self.end, self.deployment.name, len(self.pcm) / 2 / rate
        )


def is_long(text: str, pool: LivePool) -> bool:
    """True when some deployment of `pool` cannot take `text` in one request."""
    return len(text) > min(d.config.max_input_chars for d in pool.deployments)


async def synthesize_segment(
    job: SpeechJob, start: int, *, index: int, previous: LiveDeployment | None
) -> SegmentAudio | None:
    """The next segment from `start`, spoken with failover and decoded to PCM; None when only
    whitespace is left. Raises `AllDeploymentsFailedError` like a whole request would."""
    if not job.text[start:].strip():
        return None

    async def attempt(
        deployment: LiveDeployment, sent: DeploymentRequest
    ) -> tuple[bytes, int, int]:
        span = next_segment(job.text, start, deployment.config.max_input_chars)
        assert span is not None
        begin, end = span
        request = job.segment_request(job.text[begin:end])
        async with open_audio_stream(
            job.http(), deployment.endpoint, request, sent, deployment.timeouts
        ) as stream:
            body = await stream.read_all()
        pcm = await decode_segment(body, sent, deployment, job.rate)
        return pcm, begin, end

    served = await run_with_failover(
        job.pool,
        job.segment_request(job.text),
        attempt,
        clock=job.clock,
        candidates=job.candidates(previous),
        deadline=job.deadline,
        deposit=index == 0,
    )
    pcm, begin, end = served.value
    if previous is not None and served.deployment is not previous:
        job.pool.emit(
            events.SegmentSwitched(
                pool=job.pool.name,
                deployment=served.deployment.name,
                previous=previous.name,
                segment=index,
            )
        )
    return SegmentAudio(pcm, begin, end, served.deployment, served.attempts)


async def decode_segment(
    body: bytes, sent: DeploymentRequest, deployment: LiveDeployment, rate: int
) -> bytes:
    """A segment's body as s16 mono PCM at `rate`; undecodable audio fails the attempt over."""

    def run() -> bytes:
        declared = AudioFormat(sent.asked_format)
        return decode_to_pcm(
            body, declared=declared, declared_rate=deployment.config.sample_rate, target_rate=rate
        ).samples

    try:
        return run() if len(body) <= INLINE_CPU_BYTES else await anyio.to_thread.run_sync(run)
    except AudioError as exc:
        raise AttemptError(
            verdict_for(FailureKind.NOT_AUDIO, f"HTTP 200 but not usable audio: {exc}")
        ) from exc


async def synthesize_long(job: SpeechJob) -> Synthesized:
    """The whole text, segment by segment, as one file in the requested format."""
    target = AudioFormat(job.request.response_format)
    joined = bytearray()
    segments: list[SpeechSegment] = []
    attempts: list[Attempt] = []
    previous: LiveDeployment | None = None
    position = 0
    while (
        segment := await synthesize_segment(job, position, index=len(segments), previous=previous)
    ) is not None:
        segments.append(segment.describe(len(segments), job.rate))
        attempts.extend(segment.attempts)
        joined += segment.pcm
        previous, position = segment.deployment, segment.end
    pcm = PcmAudio(samples=bytes(joined), sample_rate=job.rate)
    del joined

    def encode() -> bytes:
        return encode_pcm(pcm, target)

    content = (
        encode() if len(pcm.samples) <= INLINE_CPU_BYTES else await anyio.to_thread.run_sync(encode)
    )
    return Synthesized(
        content,
        deployment=segments[0].deployment,
        attempts=tuple(attempts),
        response_format=target.value,
        sample_rate=encodable_rate(target, job.rate),
        duration=pcm.duration,
        segments=tuple(segments),
    )
