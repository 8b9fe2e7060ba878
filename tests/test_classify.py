"""SPEC §4's classification table, row by row, as a pure function."""

from __future__ import annotations

import email.utils

import pytest

from resilient_tts._core._classify import (
    BreakerEffect,
    FailureKind,
    Retry,
    classify_exception,
    classify_status,
    error_message,
    redact,
)

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("status", "headers", "body", "kind", "retry", "breaker"),
    [
        (
            500,
            {},
            {"error": {"message": "boom"}},
            FailureKind.SERVER_ERROR,
            Retry.ONCE,
            BreakerEffect.FAILURE,
        ),
        (502, {}, "Bad Gateway", FailureKind.SERVER_ERROR, Retry.ONCE, BreakerEffect.FAILURE),
        (503, {}, None, FailureKind.SERVER_ERROR, Retry.ONCE, BreakerEffect.FAILURE),
        (504, {}, None, FailureKind.SERVER_ERROR, Retry.ONCE, BreakerEffect.FAILURE),
        (
            429,
            {"retry-after": "3"},
            None,
            FailureKind.RATE_LIMITED,
            Retry.LAST_RESORT,
            BreakerEffect.NONE,
        ),
        (
            503,
            {"retry-after-ms": "1500"},
            None,
            FailureKind.RATE_LIMITED,
            Retry.LAST_RESORT,
            BreakerEffect.NONE,
        ),
        (
            429,
            {},
            {"error": {"message": "slow down"}},
            FailureKind.THROTTLED,
            Retry.LAST_RESORT,
            BreakerEffect.THROTTLE,
        ),
        (
            401,
            {},
            {"error": {"message": "bad key"}},
            FailureKind.DEPLOYMENT_BROKEN,
            Retry.NEVER,
            BreakerEffect.FORCE_OPEN,
        ),
        (403, {}, None, FailureKind.DEPLOYMENT_BROKEN, Retry.NEVER, BreakerEffect.FORCE_OPEN),
        (404, {}, None, FailureKind.DEPLOYMENT_BROKEN, Retry.NEVER, BreakerEffect.FORCE_OPEN),
        (
            429,
            {"retry-after": "1"},
            {"error": {"code": "insufficient_quota", "message": "You exceeded your current quota"}},
            FailureKind.DEPLOYMENT_BROKEN,
            Retry.NEVER,
            BreakerEffect.FORCE_OPEN,
        ),
        (
            400,
            {},
            {"error": {"message": "could not find real modelID for kokoro"}},
            FailureKind.DEPLOYMENT_BROKEN,
            Retry.NEVER,
            BreakerEffect.FORCE_OPEN,
        ),
        (
            400,
            {},
            {"detail": {"error": "validation_error", "message": "Voice 'alloy' not found"}},
            FailureKind.UNSUPPORTED,
            Retry.NEVER,
            BreakerEffect.NONE,
        ),
        (
            422,
            {},
            {
                "detail": [
                    {"loc": ["body", "response_format"], "msg": "unsupported response_format"}
                ]
            },
            FailureKind.UNSUPPORTED,
            Retry.NEVER,
            BreakerEffect.NONE,
        ),
        (
            400,
            {},
            {"error": {"message": "input too long"}},
            FailureKind.REJECTED,
            Retry.NEVER,
            BreakerEffect.NONE,
        ),
    ],
)
def test_status_rows(
    status: int,
    headers: dict[str, str],
    body: object,
    kind: FailureKind,
    retry: Retry,
    breaker: BreakerEffect,
) -> None:
    """Each status row of the table maps to its retry rule and breaker effect."""
    verdict = classify_status(status, headers, body, now=NOW)
    assert (verdict.kind, verdict.retry, verdict.breaker) == (kind, retry, breaker)
    assert verdict.status_code == status
    assert str(status) in verdict.detail


def test_retry_after_becomes_a_cooldown_in_seconds_or_http_date() -> None:
    """Retry-After in seconds, retry-after-ms and an HTTP-date all become the cooldown."""
    assert classify_status(429, {"Retry-After": "7"}, None, now=NOW).cooldown == 7
    assert classify_status(503, {"retry-after-ms": "250"}, None, now=NOW).cooldown == pytest.approx(
        0.25
    )
    date = email.utils.formatdate(NOW + 30, usegmt=True)
    assert classify_status(503, {"retry-after": date}, None, now=NOW).cooldown == pytest.approx(
        30, abs=1
    )


class ConnectError(Exception):
    """Stands in for httpx2.ConnectError: classification goes by the exception's name."""


class RemoteProtocolError(Exception):
    pass


class ServerDisconnectedError(Exception):
    pass


class ConnectTimeout(Exception):
    pass


def _wrapped(inner: Exception) -> Exception:
    try:
        try:
            raise inner
        except Exception as exc:
            raise RuntimeError("Connection error.") from exc
    except RuntimeError as outer:
        return outer


def test_transport_errors_before_and_after_headers() -> None:
    """Refused: CONNECT, no retry. Dropped before headers: RESET, one retry. After: a cut body."""
    refused = classify_exception(
        _wrapped(ConnectError("[Errno 111] Connection refused")), headers_received=False
    )
    assert (refused.kind, refused.retry) == (FailureKind.CONNECT, Retry.NEVER)
    assert "Connection refused" in refused.detail
    reset = classify_exception(
        _wrapped(RemoteProtocolError("Server disconnected")), headers_received=False
    )
    assert (reset.kind, reset.retry) == (FailureKind.RESET, Retry.ONCE)
    # aiohttp's disconnect arrives mapped to ConnectTimeout by openai's transport.
    aiohttp_reset = ConnectTimeout("Server disconnected")
    aiohttp_reset.__cause__ = ServerDisconnectedError("Server disconnected")
    assert classify_exception(aiohttp_reset, headers_received=False).kind is FailureKind.RESET
    cut = classify_exception(RemoteProtocolError("peer closed connection"), headers_received=True)
    assert (cut.kind, cut.breaker) == (FailureKind.SHORT_BODY, BreakerEffect.FAILURE)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"error": {"message": "bad voice", "type": "invalid_request_error"}}, "bad voice"),
        (
            {"detail": {"error": "validation_error", "message": "Voice x not found"}},
            "Voice x not found",
        ),
        ({"detail": "Not Found"}, "Not Found"),
        (b'{"error": {"message": "from bytes"}}', "from bytes"),
        (
            "<html><body>502   Bad Gateway</body></html>",
            "<html><body>502 Bad Gateway</body></html>",
        ),
        (None, ""),
    ],
)
def test_error_message_reads_the_common_error_shapes(body: object, message: str) -> None:
    """OpenAI's error.message, FastAPI's detail, and plain text all yield the human part."""
    assert error_message(body) == message


def test_redact_removes_known_secrets_and_key_like_strings() -> None:
    """Keys never leave in a message, whether we know them or they look like keys."""
    text = redact("Incorrect API key provided: sk-live-abcdef123456 (mysecret)", ["mysecret"])
    assert "abcdef123456" not in text
    assert "mysecret" not in text
    assert "sk-***" in text
