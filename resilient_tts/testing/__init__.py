"""A fault-injecting OpenAI-compatible TTS server on loopback, for tests.

```python
from resilient_tts.testing import FakeSpeechServer, Fault

async with FakeSpeechServer(fault=Fault.ok(), name="gpu-a") as server:
    ...  # point a client at server.base_url
    server.set_fault(Fault.status(503, retry_after=2))
```

Runs under asyncio and trio (anyio), over real sockets; time-based faults follow
`anyio.current_time()`, so trio's `MockClock` drives them without sleeping. From a shell:
``python -m resilient_tts.testing --port 8880 --fault status:503:2``.
"""

from ._faults import Fault
from ._server import FakeSpeechServer, RecordedRequest, serve_pool

__all__ = [
    "FakeSpeechServer",
    "Fault",
    "RecordedRequest",
    "serve_pool",
]

# Tracebacks and docs say resilient_tts.testing.Fault, not resilient_tts.testing._faults.Fault.
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
