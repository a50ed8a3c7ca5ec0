with

source as (

    select * from {{ source('benefits', 'employees') }}

),

published_batches as (

    select
        batch_id,
        cast(publish_seq as bigint) as publish_seq
    from {{ source('benefits', 'ingest_batches') }}
    where status = 'published'
        and feed = 'employees'

),

published_rows as (

    select
        source.*,
        published_batches.publish_seq as _publish_seq
    from source
    inner join published_batches
        on source._batch_id = published_batches.batch_id

),

-- Exact duplicate lines of one batch collapse to the first line. `_publish_seq` is a
-- grouping column, so the facts' watermark filter on it is pushed below this step
-- (and down to the batch scan). A repeat in a later batch is a later version of the
-- record and is resolved by the latest-version rule in the facts.
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
        {{ clean_null('employee_id') }} as employee_id,
        {{ standardize_ein('company_ein') }} as company_ein,

        -- strings
        {{ clean_null('first_name') }} as first_name,
        {{ clean_null('last_name') }} as last_name,
        {{ normalize_email('email') }} as email,
        {{ clean_null('company_name') }} as company_name,
        {{ clean_null('notes') }} as notes,
        {{ note_field('notes', 'dept') }} as department,
        {{ note_field('notes', 'level') }} as level,

        -- booleans
        {{ parse_bool('is_active') }} as is_active,

        -- dates
        {{ parse_date('hire_date') }} as hire_date,
        {{ parse_date('termination_date') }} as termination_date,
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
