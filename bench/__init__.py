"""Benchmarks and rehearsals (importable so tests can reuse them)."""
