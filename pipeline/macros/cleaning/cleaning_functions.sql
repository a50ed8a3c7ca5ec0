{#-
    PostgreSQL has no common subexpressions: the inline date and timestamp parsing
    (postgres__parse_date) names the cleaned value in every branch and field, and the
    server re-computes it each time (trim, lower, split_part and a cast per mention:
    ~15 per date). The same logic as PL/pgSQL functions computes each value once, with
    identical results. They live in the target's schema and are (re)created by the
    project's on-run-start hook, so a plain `dbt build` has them too; other engines
    need none (DuckDB's try_strptime and Spark's try_to_timestamp return NULL).
-#}
{% macro create_cleaning_functions() -%}
    {{ return(adapter.dispatch('create_cleaning_functions', 'benefits_pipeline')()) }}
{%- endmacro %}

{% macro default__create_cleaning_functions() -%}
{%- endmacro %}

{#- The schema-qualified name of one of these functions. -#}
{% macro cleaning_function(name) -%}
    {{ adapter.quote(target.schema) }}.{{ name }}
{%- endmacro %}

{% macro postgres__create_cleaning_functions() -%}
    {#- one calendar check for both functions: NULL for month 13, 30 February, year 0 -#}
    {%- set make_date_body -%}
        if y < 1 or m < 1 or m > 12 or d < 1 or d > 31 then
            return null;
        end if;
        candidate := make_date(y, m, 1) + (d - 1);
        if extract(month from candidate) <> m then
            return null;
        end if;
    {%- endset -%}

    create schema if not exists {{ adapter.quote(target.schema) }};

    create or replace function {{ cleaning_function('dq_parse_date') }}(value text)
    returns date language plpgsql immutable strict parallel safe as $fn$
    declare
        parts text[];
        y integer;
        m integer;
        d integer;
        candidate date;
    begin
        if value ~ '^[0-9]{1,4}-[0-9]{1,2}-[0-9]{1,2}$' then
            parts := string_to_array(value, '-');
            y := parts[1]; m := parts[2]; d := parts[3];
        elsif value ~ '^[0-9]{1,2}/[0-9]{1,2}/[0-9]{1,4}$' then
            parts := string_to_array(value, '/');
            y := parts[3]; m := parts[1]; d := parts[2];
        elsif value ~ '^[0-9]{8}$' then
            y := substr(value, 1, 4); m := substr(value, 5, 2); d := substr(value, 7, 2);
        elsif value ~* '^[0-9]{1,2}-(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)-[0-9]{1,4}$' then
            parts := string_to_array(value, '-');
            y := parts[3]; d := parts[1];
            m := (strpos('janfebmaraprmayjunjulaugsepoctnovdec', lower(parts[2])) + 2) / 3;
        else
            return null;
        end if;
        {{ make_date_body }}
        return candidate;
    end
    $fn$;

    create or replace function {{ cleaning_function('dq_parse_timestamp') }}(value text)
    returns timestamp language plpgsql immutable strict parallel safe as $fn$
    declare
        day text[];
        clock text[];
        y integer;
        m integer;
        d integer;
        candidate date;
    begin
        if value !~ '^[0-9]{1,4}-[0-9]{1,2}-[0-9]{1,2}( [0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}|T[0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}Z?)$' then
            return null;
        end if;
        day := string_to_array(split_part(translate(value, 'T', ' '), ' ', 1), '-');
        clock := string_to_array(split_part(rtrim(translate(value, 'T', ' '), 'Z'), ' ', 2), ':');
        if clock[1]::integer >= 24 or clock[2]::integer >= 60 or clock[3]::integer >= 60 then
            return null;
        end if;
        y := day[1]; m := day[2]; d := day[3];
        {{ make_date_body }}
        return candidate + make_interval(
            hours => clock[1]::integer, mins => clock[2]::integer, secs => clock[3]::integer
        );
    end
    $fn$;

    create or replace function {{ cleaning_function('dq_clean_null') }}(value text)
    returns text language plpgsql immutable strict parallel safe as $fn$
    declare
        trimmed text := trim(value);
    begin
        if lower(trimmed) in ('', 'null', 'n/a', 'none') then
            return null;
        end if;
        return trimmed;
    end
    $fn$;
{%- endmacro %}
