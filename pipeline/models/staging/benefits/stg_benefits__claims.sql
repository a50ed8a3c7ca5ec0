{#-
    A table, built incrementally like every per-batch staging model of a feed that
    grows each day (claims, plans, employees): each published batch is deduplicated
    and cleaned once. As views, every read of a day's rows (the facts' and versions'
    merges, dbt's tests on the model and its children, the monitor's counts, grain
    suites and profile) re-ran the duplicate-line group-by over every column and the
    cleaning (README, Results).

    Batches replaced whole (the replace_batches strategy: the stored rows of the
    batches the run may bring are deleted, then the day's rows are inserted, cleaned
    once and written once), so re-reading the newest batches (lookback_batches) is
    idempotent. A retracted batch (published, then rejected with --retract: it keeps its
    publish_seq) is deleted by the post-hook at the next build, which is when staging
    stops showing it.

    Spark: partitioned by _batch_id, and dbt-spark's insert_overwrite replaces the
    partitions of the batches read (the same replacement by _batch_id); a retracted
    batch's partition is dropped.

    The materialization is configured in dbt_project.yml, shared by the three feeds;
    meta.feed and the post-hook name this model's feed.
-#}
{{ config(meta={'feed': 'claims'}, post_hook="{{ delete_retracted_batches('claims') }}") }}

with

-- Rows of the published batches above the table's watermark, exact duplicate lines
-- of a batch collapsed (macros/published_rows.sql).
deduplicated as (

    {{ published_rows_to_stage('claims') }}

),

renamed as (

    select
        -- ids
        {{ clean_null('claim_id') }} as claim_id,
        {{ clean_null('plan_id') }} as plan_id,
        {{ clean_null('employee_id') }} as employee_id,

        -- strings
        lower({{ clean_null('status') }}) as status,
        upper({{ clean_null('diagnosis_code') }}) as diagnosis_code,
        {{ clean_null('notes') }} as notes,
        {{ note_field('notes', 'auth') }} as auth_code,
        lower({{ note_field('notes', 'visit') }}) as visit_type,

        -- numerics
        {{ try_cast_decimal(clean_null('amount'), 18, 2) }} as amount,

        -- booleans
        {{ parse_bool('is_in_network') }} as is_in_network,

        -- dates
        {{ parse_date('service_date') }} as service_date,
        {{ parse_date('received_date') }} as received_date,
        {{ parse_timestamp('updated_at') }} as updated_at,

        -- lineage
        _publish_seq,
        _batch_id,
        _source_file,
        _ingested_at,
        _line_number

    from deduplicated

)

select * from renamed
