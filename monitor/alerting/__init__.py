"""Alert rules, incidents, the outbox and its sinks; freshness between cycles; Prometheus rules."""
