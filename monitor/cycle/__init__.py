"""One cycle end to end (ingest, gate, build, checks, observe), then its gauges,
alerts and evidence; the circuit breaker."""
