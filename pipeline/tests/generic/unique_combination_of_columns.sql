{#-
    One row per combination of the columns, NULLs included: dbt_utils' test of the same
    name (no package hub here). It groups by the columns themselves; a `unique` test of
    `a || ':' || b` builds and hashes a string per row first, and skips a row where either
    is NULL. The monitor reads it as the uniqueness of those columns (monitor/core/manifest.py).
-#}
{% test unique_combination_of_columns(model, combination_of_columns) %}

with duplicated_combinations as (

    select
        {{ combination_of_columns | join(',\n        ') }},
        count(*) as n_records
    from {{ model }}
    group by {{ combination_of_columns | join(', ') }}
    having count(*) > 1

)

select * from duplicated_combinations

{% endtest %}
