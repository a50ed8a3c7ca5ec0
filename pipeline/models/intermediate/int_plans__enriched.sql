-- One row per distinct plan version (int_plans__versions), with the enrolled
-- employee's employer.

with

plans as (

    select * from {{ ref('int_plans__versions') }}

),

employees as (

    select * from {{ ref('int_employees__enriched') }}

),

-- one row per employee: the latest version
latest_employees as (

    {% call latest_version_select('employee_id') -%}
    select
        employee_id,
        company_ein,
        _enriched_publish_seq
    from employees
    {%- endcall %}

),

enriched as (

    select
        {{ surrogate_key(['plans.plan_id']) }} as plan_sk,
        plans.plan_id,
        {{ surrogate_key(['plans.employee_id']) }} as employee_sk,
        plans.employee_id,

        plans.plan_name,
        plans.plan_type,
        plans.carrier,
        plans.monthly_premium,
        plans.is_cobra,
        latest_employees.company_ein,

        plans.start_date,
        plans.end_date,
        -- an open plan is measured to its own last update, never to the clock
        {{ date_diff_days(
            'plans.start_date', 'coalesce(plans.end_date, cast(plans.updated_at as date))'
        ) }} as plan_duration_days,

        plans.updated_at,
        plans._publish_seq,
        plans._batch_id,
        plans._source_file,
        plans._ingested_at,
        plans._line_number,
        greatest(
            plans._publish_seq, latest_employees._enriched_publish_seq
        ) as _enriched_publish_seq

    from plans
    left join latest_employees
        on plans.employee_id = latest_employees.employee_id

)

select * from enriched
