"""Benchmarks: run one with ``python -m bench.NAME``; tests reuse the chaos soak."""
