{#- `  John.Doe@Acme.COM ` -> `john.doe@acme.com`. -#}
{% macro normalize_email(column) -%}
    lower({{ clean_null(column) }})
{%- endmacro %}
