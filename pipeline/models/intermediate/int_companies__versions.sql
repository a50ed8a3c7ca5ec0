-- One row per distinct version of a companie record (macros/distinct_versions.sql): an
-- unchanged row re-delivered by a later snapshot is not a new version.
{{
    config(
        materialized='incremental',
        incremental_strategy='versioned_delete_insert',
        unique_key='_version_key',
        partition_by='_publish_seq' if target.type == 'spark' else none,
        on_schema_change='fail',
    )
}}

{{ distinct_versions(ref('stg_benefits__companies')) }}
