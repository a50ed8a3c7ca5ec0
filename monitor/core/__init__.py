"""Bottom layer: config and its sections, logging, the dbt manifest, shared names,
seasonal statistics."""
