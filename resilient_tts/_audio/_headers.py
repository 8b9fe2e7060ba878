"""Rate, channels and duration read from headers alone, without decoding.

This is what lets `normalize` pass a body through untouched: deciding that nothing needs to
change must cost far less than a decode. Walking the frame headers also proves the body is
whole: a last frame or page that runs past the end means the server's body was cut short
(SPEC §4: a truncated container fails over), and that raises `AudioError`.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .._exceptions import AudioError
from ._sniff import Container, adts_frame_header, id3_end, mp3_frame_header
from ._wav import UnsupportedWavEncodingError, parse_wav_header

__all__ = ["StreamInfo", "header_info"]


class StreamInfo(NamedTuple):
    """Rate, channel count and duration of a stream (for opus: the OpusHead input rate)."""

    sample_rate: int
    channels: int
    duration: float


def header_info(data: bytes, container: Container) -> StreamInfo | None:
    """What the headers of `data` say, or None when they do not say enough.

    Raises `AudioError` when they prove the body is cut short or corrupt.
    """
    if container is Container.WAV:
        try:
            wav = parse_wav_header(data)
        except UnsupportedWavEncodingError:
            return None
        frames = wav.data_length // wav.block_align
        return StreamInfo(wav.sample_rate, wav.channels, frames / wav.sample_rate)
    if container is Container.MP3:
        return _mp3_info(data)
    if container is Container.ADTS:
        return _adts_info(data)
    if container is Container.FLAC:
        return _flac_info(data)
    if container is Container.OGG_OPUS:
        return _opus_info(data)
    return None


def _cut_short(what: str, detail: str) -> AudioError:
    return AudioError(f"{what} body is cut short: {detail}")


def _mp3_info(data: bytes) -> StreamInfo | None:
    pos = id3_end(data)
    first = mp3_frame_header(data, pos)
    if first is None:
        return None
    gapless = _lame_gapless(data, pos, first.mpeg1, first.channels)
    if gapless is not None:
        pos += first.frame_length  # the Xing/Info frame is silent: decoders skip it
    frames = _count_mp3_frames(data, pos)
    trim = 0
    if gapless is not None:
        # The Info frame's count and LAME's delay and padding give the exact decoded length,
        # as FFmpeg's mp3 demuxer computes it.
        expected, trim = gapless
        if frames < expected:
            raise _cut_short("mp3", f"its Info header counts {expected} frames, {frames} arrived")
    samples = max(frames * first.samples - trim, 0)
    return StreamInfo(first.sample_rate, first.channels, samples / first.sample_rate)


def _count_mp3_frames(data: bytes, pos: int) -> int:
    """Walk the frames from `pos` to the first byte that is not a frame header.

    A frame's length depends only on its second and third header bytes, so each distinct
    pair is parsed once: a 30 s mp3 (about 1250 frames) walks in a few hundred microseconds.
    """
    lengths: dict[int, int] = {}
    frames = 0
    end = len(data)
    while pos + 4 <= end and data[pos] == 0xFF:
        key = (data[pos + 1] << 8) | data[pos + 2]
        length = lengths.get(key)
        if length is None:
            header = mp3_frame_header(data, pos)
            if header is None:
                break
            length = lengths[key] = header.frame_length
        if pos + length > end:
            raise _cut_short("mp3", f"its last frame needs {length} bytes")
        frames += 1
        pos += length
    return frames


def _lame_gapless(data: bytes, pos: int, mpeg1: bool, channels: int) -> tuple[int, int] | None:
    """(frame count, samples to trim) from a Xing/Info frame at `pos`, or None if none is there."""
    side_info = (17 if channels == 1 else 32) if mpeg1 else (9 if channels == 1 else 17)
    tag = pos + 4 + side_info
    if data[tag : tag + 4] not in (b"Xing", b"Info") or len(data) < tag + 8:
        return None
    (flags,) = struct.unpack_from(">I", data, tag + 4)
    p = tag + 8
    frame_count = 0
    if flags & 1 and len(data) >= p + 4:
        (frame_count,) = struct.unpack_from(">I", data, p)
    p += 4 * bool(flags & 1) + 4 * bool(flags & 2) + 100 * bool(flags & 4) + 4 * bool(flags & 8)
    trim = 0
    delay_padding = data[p + 21 : p + 24]
    if len(delay_padding) == 3 and data[p : p + 4].isalpha():  # "LAME", "Lavc", "Lavf"
        delay = (delay_padding[0] << 4) | (delay_padding[1] >> 4)
        padding = ((delay_padding[1] & 0x0F) << 8) | delay_padding[2]
        trim = delay + padding
    return frame_count, trim


def _adts_info(data: bytes) -> StreamInfo | None:
    pos = id3_end(data)
    first = adts_frame_header(data, pos)
    if first is None or first.channels == 0:
        return None
    # Inline walk (see _count_mp3_frames): 13-bit frame length in bytes 3-5, and 1-4 raw
    # blocks of 1024 samples each in byte 6.
    samples = 0
    end = len(data)
    while pos + 7 <= end and data[pos] == 0xFF and data[pos + 1] & 0xF6 == 0xF0:
        length = ((data[pos + 3] & 3) << 11) | (data[pos + 4] << 3) | (data[pos + 5] >> 5)
        if length < 7:
            break
        if pos + length > end:
            raise _cut_short("aac", f"its last ADTS frame needs {length} bytes")
        samples += 1024 * ((data[pos + 6] & 3) + 1)
        pos += length
    # ADTS has nowhere to record the encoder's priming: this counts it (see _codec).
    return StreamInfo(first.sample_rate, first.channels, samples / first.sample_rate)


def _flac_info(data: bytes) -> StreamInfo | None:
    pos = id3_end(data) + 4
    # The first metadata block is always STREAMINFO (type 0), 34 bytes.
    block = data[pos + 4 : pos + 4 + 34]
    if len(block) < 18 or data[pos] & 0x7F != 0:
        return None
    (block_size,) = struct.unpack_from(">H", block, 2)
    (packed,) = struct.unpack_from(">Q", block, 10)
    rate = packed >> 44
    channels = ((packed >> 41) & 0x7) + 1
    total = packed & 0xF_FFFF_FFFF
    if rate == 0 or total == 0:  # a streaming encoder that never came back to fill it in
        return None
    if not _flac_ends_whole(data, total, block_size):
        raise _cut_short("flac", f"its last frame does not end at sample {total}")
    return StreamInfo(rate, channels, total / rate)


def _flac_ends_whole(data: bytes, total: int, fixed_block_size: int) -> bool:
    """True when the body ends with the frame holding sample `total`, intact (CRC-16)."""
    end = len(data)
    floor = max(end - 65536, 0)  # a FLAC frame is far smaller than this
    while (pos := data.rfind(b"\xff", floor, end)) >= 0:
        end = pos
        header = _flac_frame_header(data, pos, fixed_block_size)
        if header is None:
            continue
        first_sample, samples = header
        if first_sample + samples == total:
            footer = int.from_bytes(data[-2:], "big")
            return _crc16(memoryview(data)[pos:-2]) == footer
    return False


_FLAC_BLOCK_SIZES = (0, 192, 576, 1152, 2304, 4608, -8, -16, *(256 << n for n in range(8)))


def _flac_frame_header(data: bytes, pos: int, fixed_block_size: int) -> tuple[int, int] | None:
    """(first sample, samples) of the FLAC frame header at `pos`, if one is there (CRC-8)."""
    h = data[pos : pos + 16]
    if len(h) < 6 or h[1] & 0xFE != 0xF8:
        return None
    variable = h[1] & 1
    number, p = _utf8_number(h, 4)
    if number is None:
        return None
    samples = _FLAC_BLOCK_SIZES[h[2] >> 4]
    if samples < 0:  # the size follows the number, minus one, in 8 or 16 bits
        width = -samples // 8
        samples = int.from_bytes(h[p : p + width], "big") + 1
        p += width
    rate_code = h[2] & 0xF
    p += 1 if rate_code == 12 else 2 if rate_code in (13, 14) else 0
    if samples == 0 or p >= len(h) or _crc8(h[:p]) != h[p]:
        return None
    return (number if variable else number * fixed_block_size), samples


def _utf8_number(h: bytes, p: int) -> tuple[int | None, int]:
    """FLAC's frame number: UTF-8's variable-length coding, extended to 36 bits."""
    first = h[p]
    length = 8 - (~first & 0xFF).bit_length() if first & 0x80 else 1  # leading one bits
    if (first & 0x80 and length < 2) or length > 7 or p + length > len(h):
        return None, p
    value = first & (0x7F >> length) if length > 1 else first
    for b in h[p + 1 : p + length]:
        if b & 0xC0 != 0x80:
            return None, p
        value = (value << 6) | (b & 0x3F)
    return value, p + length


def _crc_table(poly: int, width: int) -> tuple[int, ...]:
    top, mask = 1 << (width - 1), (1 << width) - 1
    table = []
    for byte in range(256):
        crc = byte << (width - 8)
        for _ in range(8):
            crc = ((crc << 1) ^ poly if crc & top else crc << 1) & mask
        table.append(crc)
    return tuple(table)


_CRC8 = _crc_table(0x07, 8)
_CRC16 = _crc_table(0x8005, 16)


def _crc8(data: bytes) -> int:
    crc = 0
    for b in data:
        crc = _CRC8[crc ^ b]
    return crc


def _crc16(data: memoryview) -> int:
    crc = 0
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[(crc >> 8) ^ b]
    return crc


_EOS = 0x04


def _opus_info(data: bytes) -> StreamInfo | None:
    if len(data) < 27:
        return None
    head_at = 27 + data[26]
    head = data[head_at : head_at + 19]
    if len(head) < 19:
        return None
    channels = head[9]
    pre_skip, input_rate = struct.unpack_from("<HI", head, 10)
    # Walk the pages (about one per second of audio): the last must be whole and carry the
    # end-of-stream flag (RFC 3533 §6), and its granule position counts 48 kHz samples
    # including the pre-skip (RFC 7845 §4), whatever rate the encoder was fed.
    pos = 0
    granule = flags = 0
    while pos < len(data):
        if data[pos : pos + 4] != b"OggS" or len(data) < pos + 27:
            raise AudioError(f"Ogg body is corrupt: no page header at byte {pos}")
        segments = data[pos + 26]
        table = data[pos + 27 : pos + 27 + segments]
        end = pos + 27 + segments + sum(table)
        if len(table) < segments or end > len(data):
            raise _cut_short("opus", f"its last Ogg page ends at byte {end}")
        flags = data[pos + 5]
        (granule,) = struct.unpack_from("<q", data, pos + 6)
        pos = end
    if not flags & _EOS:
        raise _cut_short("opus", "its last Ogg page does not end the stream")
    samples = max(granule - pre_skip, 0)
    return StreamInfo(input_rate or 48000, channels, samples / 48000)
