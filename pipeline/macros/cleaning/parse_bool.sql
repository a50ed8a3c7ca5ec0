{#- Y/N, yes/no, true/false, 1/0 (and t/f) in any case; anything else is NULL. -#}
{% macro parse_bool(column) -%}
    case
        when lower({{ clean_null(column) }}) in ('y', 'yes', 'true', 't', '1') then true
        when lower({{ clean_null(column) }}) in ('n', 'no', 'false', 'f', '0') then false
    end
{%- endmacro %}
