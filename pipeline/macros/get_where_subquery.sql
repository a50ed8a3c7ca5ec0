-- dbt's own get_where_subquery, plus one placeholder: `__monitor_touched_after__` in a
-- data test's `where` (dbt_project.yml) becomes DBT_MONITOR_TOUCHED_AFTER when the test
-- runs, else -1 (every row). The monitor sets that variable to its touched-rows
-- watermark for each cycle's build. Read at run time, never at parse time: a `--vars`
-- or parse-time value that changed every cycle would make dbt re-parse the whole
-- project on every build (no partial parsing).
{% macro default__get_where_subquery(relation) -%}
    {%- set where = config.get('where', '') -%}
    {%- if where -%}
        {%- if '__monitor_touched_after__' in where -%}
            {%- set after = env_var('DBT_MONITOR_TOUCHED_AFTER', '-1') if execute else '-1' -%}
            {%- if not (after | string).lstrip('-').isdigit() -%}
                {{ exceptions.raise_compiler_error(
                    'DBT_MONITOR_TOUCHED_AFTER must be an integer, got ' ~ after) }}
            {%- endif -%}
            {%- set where = where | replace('__monitor_touched_after__', after | string) -%}
        {%- endif -%}
        {%- set filtered -%}
            (select * from {{ relation }} where {{ where }}) dbt_subquery
        {%- endset -%}
        {%- do return(filtered) -%}
    {%- else -%}
        {%- do return(relation) -%}
    {%- endif -%}
{%- endmacro %}
