"""Loaders: each reads one landed file into the raw tables its own way (DuckDB's CSV
reader, Python's row by row) behind the shared interface in ``base``."""
