{#-
    Raw dates arrive as YYYY-MM-DD, MM/DD/YYYY, YYYYMMDD or DD-Mon-YYYY. The formats
    cannot be confused with each other (different separators and lengths), so the
    first one that parses wins. Anything else becomes NULL; the ingest contracts
    hold such a batch before it is published.
-#}
{% macro parse_date(column) -%}
    cast(
        try_strptime(
            {{ clean_null(column) }},
            ['%Y-%m-%d', '%m/%d/%Y', '%Y%m%d', '%d-%b-%Y']
        ) as date
    )
{%- endmacro %}


{#- `updated_at` arrives as `YYYY-MM-DD HH:MM:SS` or ISO `YYYY-MM-DDTHH:MM:SSZ` (UTC). -#}
{% macro parse_timestamp(column) -%}
    cast(
        try_strptime(
            {{ clean_null(column) }},
            ['%Y-%m-%d %H:%M:%S', '%Y-%m-%dT%H:%M:%SZ', '%Y-%m-%dT%H:%M:%S']
        ) as timestamp
    )
{%- endmacro %}
