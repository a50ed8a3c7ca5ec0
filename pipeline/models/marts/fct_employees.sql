{#-
    One row per employee_id: the latest published version, merged incrementally.
    on_schema_change='fail' for the reason given in fct_claims; version_guard: a version
    older than the one already in the fact is dropped by the merge
    (macros/incremental/get_incremental_versioned_delete_insert_sql.sql).
-#}
{{
    config(
        materialized='incremental',
        incremental_strategy='versioned_delete_insert',
        unique_key='employee_id',
        partition_by='hire_date' if target.type == 'spark' else none,
        version_guard=true,
        on_schema_change='fail',
    )
}}

{#- The incremental watermark: one compile-time query, shared by every filter below. -#}
{%- set watermark = publish_watermark() if is_incremental() else none %}

with

-- Incremental: versions from batches above the watermark, plus versions whose
-- company enrichment (EIN inference, industry, headcount, revenue) changed since then.
employee_versions as (

    select * from {{ ref('int_employees__enriched') }}
    {% if is_incremental() %}
    where _publish_seq > {{ watermark }}
        or _enriched_publish_seq > {{ watermark }}
    {% endif %}

),

-- pre-merge dedupe: the latest version per key wins, deterministically; a version
-- older than the stored one is dropped by the merge (version_guard)
latest_employees as (

    {% call latest_version_select('employee_id') -%}
    select * from employee_versions
    {%- endcall %}

),

final as (

    select
        employee_sk,
        employee_id,

        first_name,
        last_name,
        email,
        email_domain,
        department,
        level,
        is_active,

        company_name,
        company_ein,
        company_ein_source,
        company_domain,
        company_industry,
        company_headcount,
        company_revenue,

        hire_date,
        termination_date,
        tenure_as_of_date,
        tenure_days,
        tenure_years,

        updated_at,
        _publish_seq,
        _batch_id,
        _source_file,
        _ingested_at,
        _line_number,
        _enriched_publish_seq

    from latest_employees

)

select * from final
-- partition order, for zone-map pruning on hire_date
order by hire_date, employee_id
