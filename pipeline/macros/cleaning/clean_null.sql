{#-
    Trim a raw text value and turn every null spelling the feeds use (empty,
    NULL, N/A, none; any case) into a real NULL. All other cleaning macros start
    from this, so a null spelling never reaches a cast or a pattern.
-#}
{% macro clean_null(column) -%}
    case
        when lower(trim({{ column }})) in ('', 'null', 'n/a', 'none') then null
        else trim({{ column }})
    end
{%- endmacro %}
