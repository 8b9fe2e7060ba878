"""Tests of resilient_tts._audio: sniffing, WAV, resampling, transcoding (SPEC §6)."""
