{#-
    One row per plan_id: the latest published version, merged incrementally.
    on_schema_change='fail' for the reason given in fct_claims; version_guard as in
    fct_employees.
-#}
{{
    config(
        materialized='incremental',
        incremental_strategy='versioned_delete_insert',
        unique_key='plan_id',
        partition_by='start_date' if target.type == 'spark' else none,
        version_guard=true,
        on_schema_change='fail',
    )
}}

{#- The incremental watermark: one compile-time query, shared by every filter below. -#}
{%- set watermark = publish_watermark() if is_incremental() else none %}

with

-- Incremental: versions from batches above the watermark, plus versions whose
-- claimant's employer data changed since then (plans are dimension-sized, so
-- reading all plan versions for the second condition is cheap).
plan_versions as (

    select * from {{ ref('int_plans__enriched') }}
    {% if is_incremental() %}
    where _publish_seq > {{ watermark }}
        or _enriched_publish_seq > {{ watermark }}
    {% endif %}

),

-- pre-merge dedupe: the latest version per key wins, deterministically; a version
-- older than the stored one is dropped by the merge (version_guard)
latest_plans as (

    {% call latest_version_select('plan_id') -%}
    select * from plan_versions
    {%- endcall %}

),

final as (

    select
        plan_sk,
        plan_id,
        employee_sk,
        employee_id,

        plan_name,
        plan_type,
        carrier,
        monthly_premium,
        is_cobra,
        company_ein,

        start_date,
        end_date,
        plan_duration_days,

        updated_at,
        _publish_seq,
        _batch_id,
        _source_file,
        _ingested_at,
        _line_number,
        _enriched_publish_seq

    from latest_plans

)

select * from final
-- partition order, for zone-map pruning on start_date
order by start_date, plan_id
