{#-
    Planner statistics of the table a model just wrote, as a post-hook of every model
    (dbt_project.yml). PostgreSQL: `analyze` of a table or incremental model, inside its
    transaction. Its autovacuum would analyze the table only a minute or so later, and a
    model or test that reads a table the same build wrote (staging claims, the versions,
    the facts) was planned on no or stale row counts: nested loops over tens of
    thousands of rows (README, Running on PostgreSQL). DuckDB keeps its own statistics
    as it writes: nothing to do (an empty hook is skipped).
-#}
{% macro refresh_statistics() -%}
    {{ return(adapter.dispatch('refresh_statistics', 'benefits_pipeline')()) }}
{%- endmacro %}

{% macro default__refresh_statistics() -%}
{%- endmacro %}

{% macro postgres__refresh_statistics() -%}
    {%- if model.config.materialized in ('table', 'incremental') -%}
        analyze {{ this }}
    {%- endif -%}
{%- endmacro %}
