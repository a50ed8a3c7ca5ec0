with

source as (

    select * from {{ source('benefits', 'companies') }}

),

published_batches as (

    select
        batch_id,
        cast(publish_seq as bigint) as publish_seq
    from {{ source('benefits', 'ingest_batches') }}
    where status = 'published'
        and feed = 'companies'

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
        {{ standardize_ein('company_ein') }} as company_ein,

        -- strings
        {{ clean_null('company_name') }} as company_name,
        {{ normalize_domain('domain') }} as domain,
        {{ clean_null('industry') }} as industry,

        -- numerics
        -- DuckDB would round '12.5' into 13; a headcount must be whole digits
        case
            when regexp_full_match({{ clean_null('headcount') }}, '[0-9]+')
                then try_cast({{ clean_null('headcount') }} as integer)
        end as headcount,
        try_cast({{ clean_null('revenue') }} as decimal(20, 2)) as revenue,

        -- dates
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
