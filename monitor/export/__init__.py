"""Prometheus: the metrics registry and HTTP endpoint, and gauges of stored state."""
