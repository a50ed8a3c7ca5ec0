-- One row per published claim version, with its plan and claimant.
-- Version grain on purpose: claims are the ~20M rows/day feed, and fct_claims must
-- filter on _publish_seq before it picks the latest version, so the filter reaches
-- the scan of the staging table. Keep the enrichment columns in step with
-- `restated_claims` in fct_claims, which re-applies them to claims already in the fact.

with

claims as (

    select * from {{ ref('stg_benefits__claims') }}

),

-- one row per plan: the attributes a claim takes from it
plan_attributes as (

    select * from {{ ref('int_plans__claim_attributes') }}

),

-- one row per employee: the attributes a claim takes from its claimant
employee_attributes as (

    select * from {{ ref('int_employees__claim_attributes') }}

),

enriched as (

    select
        {{ surrogate_key(['claims.claim_id']) }} as claim_sk,
        claims.claim_id,
        {{ surrogate_key(['claims.plan_id']) }} as plan_sk,
        claims.plan_id,
        {{ surrogate_key(['claims.employee_id']) }} as employee_sk,
        claims.employee_id,

        claims.status,
        claims.amount,
        claims.diagnosis_code,
        claims.is_in_network,
        claims.auth_code,
        claims.visit_type,
        plan_attributes.plan_type,
        plan_attributes.carrier,
        employee_attributes.company_ein,

        claims.service_date,
        claims.received_date,
        {{ date_diff_days('claims.service_date', 'claims.received_date') }} as claim_age_days,

        claims.updated_at,
        claims._publish_seq,
        claims._batch_id,
        claims._source_file,
        claims._ingested_at,
        claims._line_number,
        greatest(
            claims._publish_seq,
            plan_attributes._attributes_publish_seq,
            employee_attributes._attributes_publish_seq
        ) as _enriched_publish_seq

    from claims
    left join plan_attributes
        on claims.plan_id = plan_attributes.plan_id
    left join employee_attributes
        on claims.employee_id = employee_attributes.employee_id

)

select * from enriched
