{#-
    Free-text notes carry `key: value` pairs separated by `;`
    (employees `dept: Sales; level: L3`, claims `auth: A12345; visit: outpatient`).
    Returns the trimmed value of `key` (case-insensitive), NULL when absent or a
    null spelling. `key` is a literal chosen by the model, never data.
-#}
{% macro note_field(column, key) -%}
    {%- if not (key | string).replace('_', '').isalnum() -%}
        {{ exceptions.raise_compiler_error("note_field: key must be alphanumeric, got " ~ key) }}
    {%- endif -%}
    {{ clean_null(regex_extract_ci(column, "(?:^|;)\\s*" ~ key ~ "\\s*:\\s*([^;]*)", 1)) }}
{%- endmacro %}
