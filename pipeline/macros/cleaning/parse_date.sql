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

{% macro duckdb__parse_date(column) -%}
    cast(
        try_strptime(
            {{ clean_null(column) }},
            ['%Y-%m-%d', '%m/%d/%Y', '%Y%m%d', '%d-%b-%Y']
        ) as date
    )
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

{% macro duckdb__parse_timestamp(column) -%}
    cast(
        try_strptime(
            {{ clean_null(column) }},
            ['%Y-%m-%d %H:%M:%S', '%Y-%m-%dT%H:%M:%SZ', '%Y-%m-%dT%H:%M:%S']
        ) as timestamp
    )
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
