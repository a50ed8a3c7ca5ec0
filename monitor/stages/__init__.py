"""The pipeline's stages: ingest, the contract gate (feed-day volume included), the
dbt build, post-build checks."""
