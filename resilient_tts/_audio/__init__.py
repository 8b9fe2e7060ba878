"""Audio normalization: sniff, decode, resample and encode what TTS servers send (SPEC §6).

Internal API for the client; nothing here is public. Every function is synchronous, pure and
CPU-bound: call it through `anyio.to_thread.run_sync` when the body is large.
"""

from ._formats import LOSSLESS_PREFERENCE, OPUS_RATES, AudioFormat, encodable_rate
from ._incremental import BodyCheck, StreamDecoder, StreamEncoder, passthrough
from ._normalize import Conversion, decode_to_pcm, encode_pcm, normalize, plan, probe
from ._sniff import Container, looks_like_text_error, sniff, sniff_container
from ._types import NormalizedAudio, PcmAudio, ProbeResult
from ._wav import STREAMING_SIZE, parse_wav, wav_header, write_wav

__all__ = [
    # the entry points
    "normalize",
    "plan",
    "Conversion",
    "decode_to_pcm",
    "encode_pcm",
    "probe",
    # streaming: decode and encode as bytes arrive
    "StreamDecoder",
    "StreamEncoder",
    "passthrough",
    "BodyCheck",
    # values
    "AudioFormat",
    "NormalizedAudio",
    "PcmAudio",
    "ProbeResult",
    # format facts
    "LOSSLESS_PREFERENCE",
    "OPUS_RATES",
    "encodable_rate",
    # sniffing
    "Container",
    "looks_like_text_error",
    "sniff",
    "sniff_container",
    # WAV
    "STREAMING_SIZE",
    "parse_wav",
    "wav_header",
    "write_wav",
]
