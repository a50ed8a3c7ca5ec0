{#-
    md5 over the key columns, NULL-safe and separator-delimited (same idea as
    dbt_utils.generate_surrogate_key, which we cannot install without hub access).
-#}
{% macro surrogate_key(columns) -%}
    md5(
        {%- for column in columns %}
        coalesce(cast({{ column }} as {{ text_type() }}), '_null_')
        {%- if not loop.last %} || '|' ||{% endif %}
        {%- endfor %}
    )
{%- endmacro %}
