with

-- Rows of published batches, exact duplicate lines of a batch collapsed
-- (macros/published_rows.sql).
deduplicated as (

    {{ published_rows('companies') }}

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
            when {{ regex_full_match(clean_null('headcount'), '[0-9]+') }}
                then {{ try_cast_integer(clean_null('headcount')) }}
        end as headcount,
        {{ try_cast_decimal(clean_null('revenue'), 20, 2) }} as revenue,

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
