"""Great Expectations suites, the DuckDB extension for GX, and the validator."""
