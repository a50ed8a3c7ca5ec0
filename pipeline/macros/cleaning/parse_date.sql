{#-
    Raw dates arrive as YYYY-MM-DD, MM/DD/YYYY, YYYYMMDD or DD-Mon-YYYY. The formats
    cannot be confused with each other (different separators and lengths), so the
    first one that parses wins. Anything else becomes NULL; the ingest contracts
    hold such a batch before it is published.

    Engine-specific (adapter.dispatch): DuckDB's try_strptime; on PostgreSQL, which has
    no parse that returns NULL on failure (to_date raises, and is lenient about the
    shape), each format's shape is matched by a pattern and its fields are checked to
    be a real calendar date (month 13, 30 February and year 0 are NULL, never an
    error) by the PL/pgSQL functions of macros/cleaning/cleaning_functions.sql.
-#}
{% macro parse_date(column) -%}
    {{ return(adapter.dispatch('parse_date', 'benefits_pipeline')(column)) }}
{%- endmacro %}

{#- DuckDB: try_strptime with a list tries each format in turn, and a failed try costs
    as much as a parse, so each value first gets the one format its separators allow
    (a slash, none, a letter, else dashes: about 3x faster on the claims feed). Only a
    value that does not parse there is given the whole list, so the result is the
    list's, value for value: a format whose separators are absent from a value cannot
    parse it, so no earlier format in the list could have won.
    tests/test_dbt_project.py checks it against the list on every shape. -#}
{% macro duckdb__parse_date(column) -%}
    {%- set value = clean_null(column) -%}
    cast(coalesce(
        case
            when contains({{ value }}, '/') then try_strptime({{ value }}, '%m/%d/%Y')
            when not contains({{ value }}, '-') then try_strptime({{ value }}, '%Y%m%d')
            when regexp_matches({{ value }}, '[A-Za-z]') then try_strptime({{ value }}, '%d-%b-%Y')
            else try_strptime({{ value }}, '%Y-%m-%d')
        end,
        try_strptime({{ value }}, ['%Y-%m-%d', '%m/%d/%Y', '%Y%m%d', '%d-%b-%Y'])
    ) as date)
{%- endmacro %}

{% macro postgres__parse_date(column) -%}
    {{ cleaning_function('dq_parse_date') }}({{ clean_null(column) }})
{%- endmacro %}


{#-
    Spark: each shape is matched first, then Spark's parser checks the calendar
    (try_to_timestamp: NULL for 30 February). Its `y` reads 1 to 4 digits as DuckDB's
    %Y (the shape allows no more), and month names in any case as %b.
-#}
{% macro spark__parse_date(column) -%}
    {%- set value = clean_null(column) -%}
    cast(case
        when {{ value }} rlike r'^[0-9]{1,4}-[0-9]{1,2}-[0-9]{1,2}$'
            then try_to_timestamp({{ value }}, 'y-M-d')
        when {{ value }} rlike r'^[0-9]{1,2}/[0-9]{1,2}/[0-9]{1,4}$'
            then try_to_timestamp({{ value }}, 'M/d/y')
        when {{ value }} rlike r'^[0-9]{8}$'
            then try_to_timestamp({{ value }}, 'yyyyMMdd')
        when {{ value }} rlike r'^[0-9]{1,2}-[A-Za-z]{3}-[0-9]{1,4}$'
            then try_to_timestamp({{ value }}, 'd-MMM-y')
    end as date)
{%- endmacro %}


{#- `updated_at` arrives as `YYYY-MM-DD HH:MM:SS` or ISO `YYYY-MM-DDTHH:MM:SSZ` (UTC). -#}
{% macro parse_timestamp(column) -%}
    {{ return(adapter.dispatch('parse_timestamp', 'benefits_pipeline')(column)) }}
{%- endmacro %}

{#- DuckDB: the one format the value's shape allows first, then the whole list, as in
    duckdb__parse_date. -#}
{% macro duckdb__parse_timestamp(column) -%}
    {%- set value = clean_null(column) -%}
    cast(coalesce(
        case
            when ends_with({{ value }}, 'Z') then try_strptime({{ value }}, '%Y-%m-%dT%H:%M:%SZ')
            when contains({{ value }}, 'T') then try_strptime({{ value }}, '%Y-%m-%dT%H:%M:%S')
            else try_strptime({{ value }}, '%Y-%m-%d %H:%M:%S')
        end,
        try_strptime({{ value }}, ['%Y-%m-%d %H:%M:%S', '%Y-%m-%dT%H:%M:%SZ', '%Y-%m-%dT%H:%M:%S'])
    ) as timestamp)
{%- endmacro %}

{% macro postgres__parse_timestamp(column) -%}
    {{ cleaning_function('dq_parse_timestamp') }}({{ clean_null(column) }})
{%- endmacro %}


{#- Spark: as timestamp_ntz (a wall-clock time, as DuckDB's timestamp), whatever the
    session's time zone; a run of whitespace between date and time as one space, as
    DuckDB's strptime reads it. -#}
{% macro spark__parse_timestamp(column) -%}
    {%- set value = clean_null(column) -%}
    {%- set day = "[0-9]{1,4}-[0-9]{1,2}-[0-9]{1,2}" -%}
    {%- set clock = "[0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}" -%}
    cast(case
        when {{ value }} rlike r'^{{ day }}\s+{{ clock }}$'
            then try_to_timestamp(regexp_replace({{ value }}, r'\s+', ' '), 'y-M-d H:m:s')
        when {{ value }} rlike r'^{{ day }}T{{ clock }}Z?$'
            then try_to_timestamp(trim(trailing 'Z' from {{ value }}), "y-M-d'T'H:m:s")
    end as timestamp_ntz)
{%- endmacro %}
