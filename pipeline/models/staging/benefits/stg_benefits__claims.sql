with

source as (

    select * from {{ source('benefits', 'claims') }}

),

published_batches as (

    select
        batch_id,
        cast(publish_seq as bigint) as publish_seq
    from {{ source('benefits', 'ingest_batches') }}
    where status = 'published'
        and feed = 'claims'

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
        try_cast({{ clean_null('amount') }} as decimal(18, 2)) as amount,

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
