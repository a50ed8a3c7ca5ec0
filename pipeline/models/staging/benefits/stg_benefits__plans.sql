with

source as (

    select * from {{ source('benefits', 'plans') }}

),

published_batches as (

    select
        batch_id,
        cast(publish_seq as bigint) as publish_seq
    from {{ source('benefits', 'ingest_batches') }}
    where status = 'published'
        and feed = 'plans'

),

published_rows as (

    select
        source.*,
        published_batches.publish_seq as _publish_seq
    from source
    inner join published_batches
        on source._batch_id = published_batches.batch_id

),

-- Exact duplicate lines of one batch collapse to the first line (see
-- stg_benefits__employees for why the dedupe is per batch).
deduplicated as (

    select
        * exclude (_line_number, _ingested_at),
        min(_line_number) as _line_number,
        min(_ingested_at) as _ingested_at
    from published_rows
    group by all

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
        try_cast({{ clean_null('monthly_premium') }} as decimal(18, 2)) as monthly_premium,

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
