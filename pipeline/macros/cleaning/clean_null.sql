{#-
    Trim a raw text value and turn every null spelling the feeds use (empty,
    NULL, N/A, none; any case) into a real NULL. All other cleaning macros start
    from this, so a null spelling never reaches a cast or a pattern.
-#}
{% macro clean_null(column) -%}
    {{ return(adapter.dispatch('clean_null', 'benefits_pipeline')(column)) }}
{%- endmacro %}

{% macro default__clean_null(column) -%}
    case
        when lower(trim({{ column }})) in ('', 'null', 'n/a', 'none') then null
        else trim({{ column }})
    end
{%- endmacro %}

{#- PostgreSQL evaluates each mention of `column` again: a computed value (a regex
    extraction) goes through the dq_clean_null function instead, which trims it once
    (macros/cleaning/cleaning_functions.sql); a plain column stays inline. -#}
{% macro postgres__clean_null(column) -%}
    {%- if modules.re.fullmatch('[A-Za-z_][A-Za-z0-9_."]*', column | string) -%}
        {{ default__clean_null(column) }}
    {%- else -%}
        {{ cleaning_function('dq_clean_null') }}({{ column }})
    {%- endif -%}
{%- endmacro %}
