{#-
    EINs arrive as 12-3456789, 123456789 or 12 3456789. Separators are dropped and
    the nine digits re-formatted as NN-NNNNNNN; a value that is not exactly nine
    digits after that is NULL (and may then be inferred from the company).
-#}
{% macro standardize_ein(column) -%}
    {{ return(adapter.dispatch('standardize_ein', 'benefits_pipeline')(column)) }}
{%- endmacro %}

{% macro default__standardize_ein(column) -%}
    {%- set digits = "regexp_replace(" ~ clean_null(column) ~ ", '[\\s-]', '', 'g')" -%}
    case
        when {{ regex_full_match(digits, '[0-9]{9}') }}
            then substr({{ digits }}, 1, 2) || '-' || substr({{ digits }}, 3, 7)
    end
{%- endmacro %}

{#- Spark: regexp_replace replaces every match; the pattern as a raw literal -#}
{% macro spark__standardize_ein(column) -%}
    {%- set digits = "regexp_replace(" ~ clean_null(column) ~ ", r'[\\s-]', '')" -%}
    case
        when {{ regex_full_match(digits, '[0-9]{9}') }}
            then substr({{ digits }}, 1, 2) || '-' || substr({{ digits }}, 3, 7)
    end
{%- endmacro %}
