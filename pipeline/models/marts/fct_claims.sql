{#-
    One row per claim_id: the latest published version, merged incrementally.

    on_schema_change='fail': restated rows are rebuilt from the fact itself, and
    'append_new_columns' would leave a new column NULL on every row the run does not
    touch, so an incremental fact would silently differ from a full refresh. A
    column change therefore stops the run until it is deployed with --full-refresh.

    version_guard: a version older than the one already in the fact (a late re-delivery
    of an old record) is dropped by the merge, never merged over the newer row
    (macros/incremental/get_incremental_versioned_delete_insert_sql.sql). The merge
    finds the stored rows of the incoming keys in one scan of the fact's key column
    and replaces them by row id.
-#}
{{
    config(
        materialized='incremental',
        incremental_strategy='versioned_delete_insert',
        unique_key='claim_id',
        partition_by='service_date' if target.type == 'spark' else none,
        version_guard=true,
        on_schema_change='fail',
    )
}}

{#- The incremental watermark: one compile-time query, shared by every filter below. -#}
{%- set watermark = publish_watermark() if is_incremental() else none %}
{#- Surrogate keys are hashes of the ids: computed on the merged rows in `final`, not
    carried through the buffer, the dedupe and the sort (96 bytes of text a row). -#}
{%- set surrogate_keys = ['claim_sk', 'plan_sk', 'employee_sk'] %}

with

-- lookups for restated_claims (incremental runs only; refs stay outside the
-- is_incremental() block so dbt sees the dependencies at parse time)
plan_attributes as (

    select * from {{ ref('int_plans__claim_attributes') }}

),

employee_attributes as (

    select * from {{ ref('int_employees__claim_attributes') }}

),

-- Incremental: only versions from batches above the watermark. The filter is on the
-- claim row itself, so it is pushed through the view to the staging table scan.
-- Read three times below: twice for four columns (repeated_keys, latest_repeated), once
-- whole (claims_to_merge). DuckDB inlines it: each narrow read runs the view's joins on
-- four columns, and the wide read streams the enriched rows into the ordered write.
-- Buffered once for the three reads, 20M wide rows were written out past
-- memory_limit and read back (README, "Where a 20M day goes"). PostgreSQL computes it
-- once, as before (not measured there); Spark has no hint.
claim_versions as {{ not_materialized() if target.type == 'duckdb' else materialized() }} (

    select {{ star_except('enriched_claims', ref('int_claims__enriched'), surrogate_keys) }}
    from {{ ref('int_claims__enriched') }} as enriched_claims
    {% if is_incremental() %}
    where _publish_seq > {{ watermark }}
    {% endif %}

),

{% if is_incremental() %}

-- Plans and claimants whose claim attributes changed above the watermark (usually
-- none or few: a premium renewal or a new department leaves them as they were).
changed_plans as (

    select plan_id from plan_attributes
    where _attributes_publish_seq > {{ watermark }}

),

changed_employees as (

    select employee_id from employee_attributes
    where _attributes_publish_seq > {{ watermark }}

),

-- Claims already in the fact that belong to one of them, as the fact's row ids
-- (DuckDB's rowid, PostgreSQL's ctid: macros/dialect.sql). Two semi joins on small key
-- sets over two narrow columns; restated_claims then fetches only those rows by row id.
-- Joining the fact on claim_id instead read and decompressed every column of every
-- stored row, growing with the fact rather than with the day. Each semi join still
-- reads its column of every stored claim, except when its key set is empty: then
-- DuckDB skips the scan (README, Results).
restated_rows as (

    select {{ row_id('stored_claims') }} as fact_row
    from {{ this }} as stored_claims
    where stored_claims.plan_id in (select changed_plans.plan_id from changed_plans)
    union
    select {{ row_id('stored_claims') }} as fact_row
    from {{ this }} as stored_claims
    where stored_claims.employee_id in (select changed_employees.employee_id from changed_employees)

),

-- Those claims re-enriched exactly as int_claims__enriched does, from the fact's
-- own row (including a plan that arrived after its claims), so a series of
-- incremental runs ends where a full refresh does without re-reading claim history.
-- Fetched by row id (row_id_among: a TID scan on PostgreSQL, where `ctid in (...)`
-- is a hash semi join over the whole fact).
restated_claims as (

    select
        -- the excluded names are current_claims' own columns (sqlfluff cannot tell)
        {{ star_except(
            'current_claims', this,
            surrogate_keys + ['plan_type', 'carrier', 'company_ein', '_enriched_publish_seq']
        ) }},  -- noqa: RF02
        plan_attributes.plan_type,
        plan_attributes.carrier,
        employee_attributes.company_ein,
        greatest(
            current_claims._publish_seq,
            plan_attributes._attributes_publish_seq,
            employee_attributes._attributes_publish_seq
        ) as _enriched_publish_seq
    from {{ this }} as current_claims
    left join plan_attributes
        on current_claims.plan_id = plan_attributes.plan_id
    left join employee_attributes
        on current_claims.employee_id = employee_attributes.employee_id
    -- stored rows above the watermark are re-read (and re-enriched the same way) by
    -- claim_versions; keeping them out leaves one candidate per (claim_id,
    -- _publish_seq, _line_number), which claims_to_merge relies on
    where {{ row_id_among(row_id('current_claims'),
                          'select restated_rows.fact_row from restated_rows') }}
        and current_claims._publish_seq <= {{ watermark }}

),

{% endif %}

-- One narrow read (repeated_keys), one narrow read of a few keys (latest_repeated) and
-- one wide read (claims_to_merge).
candidate_claims as {{ not_materialized() }} (

    {{ union_all_by_name(
        ['claim_versions', 'restated_claims'] if is_incremental() else ['claim_versions'],
        this, surrogate_keys
    ) }}

),

-- Pre-merge dedupe: the latest version per key wins, deterministically. Most keys have
-- one candidate (a claim delivered once since the watermark), so only the keys with
-- several go through the window, on the key and the version columns, and every other
-- candidate passes through one join with that small set. A window over every
-- candidate, joined back to the wide rows, sorted and hashed all of the day's rows
-- (README, Results); one holding the wide rows ran out of memory.
repeated_keys as (

    select claim_id
    from candidate_claims
    where claim_id is not null
    group by claim_id
    having count(*) > 1

),

latest_repeated as (

    {% call latest_version_select('claim_id') -%}
    select
        claim_id,
        updated_at,
        _publish_seq,
        _line_number
    from candidate_claims
    where claim_id in (select repeated_keys.claim_id from repeated_keys)
    {%- endcall %}

),

-- A candidate is merged if its key has no other candidate, or if it is the latest one:
-- (claim_id, _publish_seq, _line_number) names one candidate row. A candidate without
-- a key is kept as it is, and the fact's not_null test on claim_id fails the build.
claims_to_merge as (

    select candidate_claims.*
    from candidate_claims
    left join latest_repeated
        on candidate_claims.claim_id = latest_repeated.claim_id
    where
        latest_repeated.claim_id is null
        or (
            candidate_claims._publish_seq = latest_repeated._publish_seq
            and candidate_claims._line_number = latest_repeated._line_number
        )

),

-- written in partition order so DuckDB's row-group zone maps on service_date stay
-- narrow and reads bounded by date skip row groups
merged_in_order as (

    select * from claims_to_merge
    order by service_date, claim_id

),

-- a projection keeps the order it reads
final as (

    select
        {{ surrogate_key(['claim_id']) }} as claim_sk,
        claim_id,
        {{ surrogate_key(['plan_id']) }} as plan_sk,
        plan_id,
        {{ surrogate_key(['employee_id']) }} as employee_sk,
        employee_id,

        status,
        amount,
        diagnosis_code,
        is_in_network,
        auth_code,
        visit_type,
        plan_type,
        carrier,
        company_ein,

        service_date,
        received_date,
        claim_age_days,

        updated_at,
        _publish_seq,
        _batch_id,
        _source_file,
        _ingested_at,
        _line_number,
        _enriched_publish_seq

    from merged_in_order

)

select * from final
