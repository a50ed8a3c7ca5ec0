{#-
    Company domains arrive as Acme.com, www.acme.com or https://www.acme.com/; all
    become `acme.com`: lower case, no scheme, no leading www., no port/path/query.
-#}
{% macro normalize_domain(column) -%}
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


{#-
    Company names compared across feeds ("Acme, Inc." vs "ACME Inc" vs "Acme"): lower
    case, legal-form words dropped, only letters and digits kept.
-#}
{% macro normalize_company_name(column) -%}
    nullif(
        regexp_replace(
            regexp_replace(
                lower({{ clean_null(column) }}),
                '\b(inc|incorporated|llc|ltd|limited|corp|corporation|co|company)\b', '', 'g'
            ),
            '[^a-z0-9]', '', 'g'
        ),
        ''
    )
{%- endmacro %}
