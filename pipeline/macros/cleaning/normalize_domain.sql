{#-
    Company domains arrive as Acme.com, www.acme.com or https://www.acme.com/; all
    become `acme.com`: lower case, no scheme, no leading www., no port/path/query.
-#}
{% macro normalize_domain(column) -%}
    {{ return(adapter.dispatch('normalize_domain', 'benefits_pipeline')(column)) }}
{%- endmacro %}

{% macro default__normalize_domain(column) -%}
    nullif(
        regexp_replace(
            regexp_replace(
                regexp_replace(lower({{ clean_null(column) }}), '^[a-z][a-z0-9+.-]*://', ''),
                '^www\.', ''
            ),
            '[/:?#].*$', ''
        ),
        ''
    )
{%- endmacro %}

{#- Spark: regexp_replace replaces every match (each pattern here can match once) and
    reads the pattern as a raw literal -#}
{% macro spark__normalize_domain(column) -%}
    nullif(
        regexp_replace(
            regexp_replace(
                regexp_replace(lower({{ clean_null(column) }}), r'^[a-z][a-z0-9+.-]*://', ''),
                r'^www\.', ''
            ),
            r'[/:?#].*$', ''
        ),
        ''
    )
{%- endmacro %}


{#-
    Company names compared across feeds ("Acme, Inc." vs "ACME Inc" vs "Acme"): lower
    case, legal-form words dropped, only letters and digits kept. The word boundary is
    `\b` in DuckDB's regular expressions (RE2) and `\y` in PostgreSQL's (where `\b` is
    a backspace), hence the dispatch.
-#}
{% macro normalize_company_name(column) -%}
    {{ return(adapter.dispatch('normalize_company_name', 'benefits_pipeline')(column)) }}
{%- endmacro %}

{% macro duckdb__normalize_company_name(column) -%}
    {{ company_name_key(column, '\\b') }}
{%- endmacro %}

{% macro postgres__normalize_company_name(column) -%}
    {{ company_name_key(column, '\\y') }}
{%- endmacro %}

{#- Spark's regexp_replace replaces every match (no 'g' flag); Java's \b as RE2's -#}
{% macro spark__normalize_company_name(column) -%}
    nullif(
        regexp_replace(
            regexp_replace(
                lower({{ clean_null(column) }}),
                r'\b(inc|incorporated|llc|ltd|limited|corp|corporation|co|company)\b', ''
            ),
            '[^a-z0-9]', ''
        ),
        ''
    )
{%- endmacro %}

{% macro company_name_key(column, word_boundary) -%}
    nullif(
        regexp_replace(
            regexp_replace(
                lower({{ clean_null(column) }}),
                '{{ word_boundary }}(inc|incorporated|llc|ltd|limited|corp|corporation|co|company){{ word_boundary }}', '', 'g'
            ),
            '[^a-z0-9]', '', 'g'
        ),
        ''
    )
{%- endmacro %}
