with

-- Rows of published batches, exact duplicate lines of a batch collapsed
-- (macros/published_rows.sql).
deduplicated as (

    {{ published_rows('claims') }}

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
