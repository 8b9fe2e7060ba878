"""The request path: pool, failover loop, hedged race, one attempt, streaming, long text.

It sits on the pure cores (`_core`), audio (`_audio`), configuration (`_config`),
observability (`_observe`) and fleet state (`_fleet`), and nothing below imports it.
"""
