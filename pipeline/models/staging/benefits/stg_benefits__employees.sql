{#- An incremental table of cleaned batches, as stg_benefits__claims (why, and how a
    retracted batch leaves it, is said there). -#}
{{ config(meta={'feed': 'employees'}, post_hook="{{ delete_retracted_batches('employees') }}") }}

with

-- Rows of the published batches above the table's watermark, exact duplicate lines
-- of a batch collapsed (macros/published_rows.sql).
deduplicated as (

    {{ published_rows_to_stage('employees') }}

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
