"""Bottom layer: configuration and its sections, logging, the dbt manifest, shared column
names, seasonal statistics."""
