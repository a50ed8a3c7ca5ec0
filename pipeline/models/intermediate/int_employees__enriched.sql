-- One row per distinct employee version (int_employees__versions; the facts pick the
-- latest after their watermark filter), enriched from the company reference file.

{#- Used twice in `enriched`: PostgreSQL cannot refer to an alias of the same select. -#}
{%- set tenure_days = date_diff_days(
    'employees_with_ein.hire_date', 'employees_with_ein.tenure_as_of_date'
) %}

with

employees as (

    select * from {{ ref('int_employees__versions') }}

),

companies as (

    select * from {{ ref('int_companies__versions') }}
    where company_ein is not null

),

-- one row per EIN: the latest version of each company
companies_by_ein as (

    {% call latest_version_select('company_ein') -%}
    select
        company_ein,
        domain as company_domain,
        industry,
        headcount,
        revenue,
        _publish_seq
    from companies
    {%- endcall %}

),

companies_named as (

    select
        *,
        {{ normalize_company_name('company_name') }} as company_name_key
    from companies

),

-- one row per normalized company name, over every published version, so a name an
-- employee file still uses keeps resolving after the company is renamed
companies_by_name as (

    {% call latest_version_select('company_name_key') -%}
    select
        company_name_key,
        company_ein,
        _publish_seq
    from companies_named
    where company_name_key is not null
    {%- endcall %}

),

-- one row per web domain, the same way
companies_by_domain as (

    {% call latest_version_select('domain') -%}
    select
        domain,
        company_ein,
        _publish_seq
    from companies
    where domain is not null
    {%- endcall %}

),

employees_keyed as (

    select
        *,
        {{ normalize_company_name('company_name') }} as company_name_key,
        {{ normalize_domain("split_part(email, '@', 2)") }} as email_domain,
        -- as of the record itself, never the clock, so a rebuild gives the same value
        coalesce(termination_date, cast(updated_at as date)) as tenure_as_of_date
    from employees

),

-- A missing EIN is inferred from the company name first (the sender typed it for
-- this employee), then from the email domain.
employees_with_ein as (

    select
        employees_keyed.*,

        coalesce(
            employees_keyed.company_ein,
            companies_by_name.company_ein,
            companies_by_domain.company_ein
        ) as resolved_company_ein,

        case
            when employees_keyed.company_ein is not null then 'source'
            when companies_by_name.company_ein is not null then 'company_name'
            when companies_by_domain.company_ein is not null then 'email_domain'
        end as company_ein_source,

        -- the lookup row the EIN came from; a newer one restates the fact row
        case
            when employees_keyed.company_ein is not null then null
            when companies_by_name.company_ein is not null then companies_by_name._publish_seq
            else companies_by_domain._publish_seq
        end as _ein_lookup_publish_seq

    from employees_keyed
    left join companies_by_name
        on employees_keyed.company_name_key = companies_by_name.company_name_key
    left join companies_by_domain
        on employees_keyed.email_domain = companies_by_domain.domain

),

enriched as (

    select
        {{ surrogate_key(['employees_with_ein.employee_id']) }} as employee_sk,
        employees_with_ein.employee_id,

        employees_with_ein.first_name,
        employees_with_ein.last_name,
        employees_with_ein.email,
        employees_with_ein.email_domain,
        employees_with_ein.department,
        employees_with_ein.level,
        employees_with_ein.is_active,

        employees_with_ein.company_name,
        employees_with_ein.resolved_company_ein as company_ein,
        employees_with_ein.company_ein_source,
        companies_by_ein.company_domain,
        companies_by_ein.industry as company_industry,
        companies_by_ein.headcount as company_headcount,
        companies_by_ein.revenue as company_revenue,

        employees_with_ein.hire_date,
        employees_with_ein.termination_date,
        employees_with_ein.tenure_as_of_date,
        {{ tenure_days }} as tenure_days,
        cast(round({{ tenure_days }} / 365.25, 2) as decimal(6, 2)) as tenure_years,

        employees_with_ein.updated_at,
        employees_with_ein._publish_seq,
        employees_with_ein._batch_id,
        employees_with_ein._source_file,
        employees_with_ein._ingested_at,
        employees_with_ein._line_number,
        -- newest batch among this row and the rows it was enriched from
        greatest(
            employees_with_ein._publish_seq,
            employees_with_ein._ein_lookup_publish_seq,
            companies_by_ein._publish_seq
        ) as _enriched_publish_seq

    from employees_with_ein
    left join companies_by_ein
        on employees_with_ein.resolved_company_ein = companies_by_ein.company_ein

)

select * from enriched
