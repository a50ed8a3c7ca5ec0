"""One cycle end to end: ingest, gate, build, checks, observe; then export, alert,
evidence; the circuit breaker."""
