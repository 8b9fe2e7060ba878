"""The public surface is exactly `__all__`, and public objects say they live in `resilient_tts`."""

from __future__ import annotations

import inspect

import resilient_tts
import resilient_tts.testing


def test_all_is_the_public_surface() -> None:
    """Every public name of the package is in __all__ and vice versa (modules aside)."""
    public = {
        name
        for name, value in vars(resilient_tts).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert public == set(resilient_tts.__all__)


def test_public_objects_report_the_public_module() -> None:
    """Tracebacks and docs say resilient_tts.SpeechClient, not resilient_tts._client.SpeechClient"""
    for name in resilient_tts.__all__:
        value = getattr(resilient_tts, name)
        if inspect.isclass(value) or inspect.isfunction(value):  # type aliases keep theirs
            assert value.__module__ == "resilient_tts", name
    for name in resilient_tts.testing.__all__:
        assert getattr(resilient_tts.testing, name).__module__ == "resilient_tts.testing", name


def test_every_error_derives_from_the_one_base() -> None:
    """All errors raised by the package share ResilientTTSError."""
    errors = [
        value
        for value in vars(resilient_tts).values()
        if isinstance(value, type) and issubclass(value, BaseException)
    ]
    assert errors
    assert all(issubclass(error, resilient_tts.ResilientTTSError) for error in errors)
