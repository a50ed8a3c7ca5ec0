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

{#- DuckDB: a value that cannot be a null spelling skips the lower(trim()) test and the
    trim, which cost a new string per value (about half of the cleaning's time on the
    claims feed). That is a value longer than four characters whose first and last
    characters are printable ASCII other than a space: trim removes only space
    separators (Unicode Zs: the ASCII space and non-ASCII ones), so it leaves such a
    value as it is, and lower() never shortens a value, so it cannot become one of the
    four spellings. `x >= '!' and x < chr(127)` compares bytes: the first one is in
    '!'..'~'. Every other value takes the default expression, so the result is the
    default's, value for value (tests/test_dbt_project.py checks it on every edge).
    A computed value (a regex extraction: a call) takes the default too: it would be
    written out six times. -#}
{% macro duckdb__clean_null(column) -%}
    {%- set name = column | string -%}
    {%- if name and '(' not in name and ' ' not in name and "'" not in name -%}
    case
        when length({{ column }}) > 4
            and {{ column }} >= '!' and {{ column }} < chr(127)
            and {{ column }}[-1] between '!' and '~'
            then {{ column }}
        else {{ default__clean_null(column) }}
    end
    {%- else -%}
        {{ default__clean_null(column) }}
    {%- endif -%}
{%- endmacro %}
