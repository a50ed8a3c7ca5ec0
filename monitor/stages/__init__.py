"""The pipeline's stages: ingest, the contract gate (with feed-day volume), the dbt build,
post-build checks."""
