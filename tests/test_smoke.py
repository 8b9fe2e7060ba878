from __future__ import annotations

import pytest

from resilient_tts.testing import FakeSpeechServer, Fault
from tests.helpers import client_for, speak

pytestmark = pytest.mark.anyio


async def test_smoke() -> None:
    async with FakeSpeechServer(name="a", fault=Fault.refuse()) as a, FakeSpeechServer(name="b") as b, client_for([a, b]) as client:
        speech = await speak(client)
        print(speech, speech.attempts)
        assert speech.deployment == "b"
        assert speech.content[:4] == b"RIFF"
