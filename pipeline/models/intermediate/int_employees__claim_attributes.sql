-- One row per employee: the attribute a claim takes from its claimant (the latest
-- version's resolved employer EIN) and `_attributes_publish_seq`, the batch from which it
-- holds. Why, and why it is exact: int_plans__claim_attributes.
--
-- An EIN delivered with the employee record is compared version to version. An inferred
-- one (company_ein_source 'company_name' or 'email_domain') depends on the companies
-- feed as well, so it holds only from the latest version's _enriched_publish_seq (its
-- own batch and its company lookups'), as every employee change did before.

with

employees as (

    select * from {{ ref('int_employees__enriched') }}

),

versions as (

    select
        employee_id,
        company_ein,
        company_ein_source,
        updated_at,
        _publish_seq,
        _line_number,
        _enriched_publish_seq,
        case when company_ein_source = 'source' then company_ein end as delivered_ein
    from employees

),

changes as (

    select
        *,
        {{ changes_from_previous_version(['delivered_ein'], 'latest_first') }}
            as changes_attributes
    from versions
    window latest_first as (partition by employee_id order by {{ version_order() }})

),

latest_attributes as (

    {% call latest_version_select('employee_id') -%}
    select
        employee_id,
        company_ein,
        greatest(
            max(case when changes_attributes then _publish_seq end)
                over (partition by employee_id),
            case when delivered_ein is null then _enriched_publish_seq end
        ) as _attributes_publish_seq
    from changes
    {%- endcall %}

)

select * from latest_attributes
