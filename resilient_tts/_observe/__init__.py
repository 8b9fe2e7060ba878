"""Observability: events for hooks, the log lines, the OpenTelemetry hook, health snapshots.

It reads what the request path reports and never steers it.
"""
