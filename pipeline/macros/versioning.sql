{#-
    One definition of "which version of a record is the latest", used by every
    dedupe and by the facts' guard against older rows overwriting newer ones:
    later business update first, then the later publish batch, then the later line
    of the same file. NULL updated_at counts as oldest.
-#}
{% macro version_order() -%}
    updated_at desc nulls last, _publish_seq desc, _line_number desc
{%- endmacro %}


{#-
    Keep only the latest version per `partition_by` (a column list as SQL text), as the
    last clause of a select (QUALIFY on DuckDB; macros/dialect.sql, keep_first_row).
-#}
{% macro latest_version(partition_by) -%}
    {{ keep_first_row(partition_by, version_order()) }}
{%- endmacro %}


{#-
    `{% call latest_version_select('key') -%} select ... from ... {%- endcall %}`: the
    select keeping the latest version per key, on every engine (Spark has no QUALIFY:
    macros/dialect.sql, first_row_select). The models use this, not latest_version.
-#}
{% macro latest_version_select(partition_by) -%}
    {{ first_row_select(caller(), partition_by, version_order()) }}
{%- endmacro %}


{#-
    True when the incoming row is not older than the current one under
    version_order(); ties pass, so replaying a batch re-merges identical values.
-#}
{% macro is_not_older_than(incoming, current) -%}
    (
        coalesce({{ incoming }}.updated_at, {{ oldest_timestamp() }})
            > coalesce({{ current }}.updated_at, {{ oldest_timestamp() }})
        or (
            coalesce({{ incoming }}.updated_at, {{ oldest_timestamp() }})
                = coalesce({{ current }}.updated_at, {{ oldest_timestamp() }})
            and {{ incoming }}._publish_seq >= {{ current }}._publish_seq
        )
    )
{%- endmacro %}


{#-
    True for a version whose `columns` differ from the version before it, and for the
    oldest version; `window` orders a key's versions by version_order() (latest first),
    so the version before a row is the next one in the window.
-#}
{% macro changes_from_previous_version(columns, window) -%}
    (
        lead(_publish_seq) over {{ window }} is null
        {%- for column in columns %}
        or lead({{ column }}) over {{ window }} is distinct from {{ column }}
        {%- endfor %}
    )
{%- endmacro %}


{#- A timestamp before every updated_at (Spark has no -infinity; its timestamps are
    timestamp_ntz here, see parse_timestamp). -#}
{% macro oldest_timestamp() -%}
    {{ return(adapter.dispatch('oldest_timestamp', 'benefits_pipeline')()) }}
{%- endmacro %}

{% macro default__oldest_timestamp() -%}
    '-infinity'::timestamp
{%- endmacro %}

{% macro spark__oldest_timestamp() -%}
    timestamp_ntz'0001-01-01 00:00:00'
{%- endmacro %}
