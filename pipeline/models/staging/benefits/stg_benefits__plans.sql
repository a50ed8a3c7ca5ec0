{#- An incremental table of cleaned batches, as stg_benefits__claims (why, and how a
    retracted batch leaves it, is said there). -#}
{{ config(meta={'feed': 'plans'}, post_hook="{{ delete_retracted_batches('plans') }}") }}

with

-- Rows of the published batches above the table's watermark, exact duplicate lines
-- of a batch collapsed (macros/published_rows.sql).
deduplicated as (

    {{ published_rows_to_stage('plans') }}

),

renamed as (

    select
        -- ids
        {{ clean_null('plan_id') }} as plan_id,
        {{ clean_null('employee_id') }} as employee_id,

        -- strings
        {{ clean_null('plan_name') }} as plan_name,
        lower({{ clean_null('plan_type') }}) as plan_type,
        {{ clean_null('carrier') }} as carrier,

        -- numerics
        {{ try_cast_decimal(clean_null('monthly_premium'), 18, 2) }} as monthly_premium,

        -- booleans
        {{ parse_bool('is_cobra') }} as is_cobra,

        -- dates
        {{ parse_date('start_date') }} as start_date,
        {{ parse_date('end_date') }} as end_date,
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
