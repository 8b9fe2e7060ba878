"""Fleet state: breaker state shared across processes through Redis (optional extra)."""
