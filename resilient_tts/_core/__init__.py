"""The pure cores: state machines and functions with no I/O and no anyio.

Breaker, retry maths and budget, failure classification, text segmentation, SSE parsing,
and the attempt records they produce. Time comes in as an injected clock.
"""
