{#-
    dbt's `delete+insert` strategy on PostgreSQL, with the incoming rows analyzed first.

    dbt writes the incoming rows to a temporary table and deletes the stored rows whose
    unique_key is among them (`where key in (select distinct key from <temp>)`). A
    temporary table has no statistics until analyzed (autovacuum never analyzes one), so
    the planner guesses 200 distinct keys and picks a hash join over a sequential scan of
    the whole target: every run then reads all history, and a cycle slows with every
    day stored. Analyzed, it knows the batch holds one or a few keys and looks them up
    in the b-tree on the key (macros/lookup_indexes.sql; the figures are in the README,
    "Running on PostgreSQL"). The rest is dbt's own SQL (dbt's global project).
-#}
{% macro postgres__get_delete_insert_merge_sql(target, source, unique_key, dest_columns,
                                               incremental_predicates) -%}
    {%- if unique_key %}
    analyze {{ source }};
    {%- endif %}
    {{ dbt.default__get_delete_insert_merge_sql(target, source, unique_key, dest_columns,
                                                incremental_predicates) }}
{%- endmacro %}
