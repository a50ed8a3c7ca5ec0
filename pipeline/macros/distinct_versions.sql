{#-
    Body of an `int_<entity>__versions` model: one row per distinct version of a
    record among the published rows of `staged`, where a version is the record's
    cleaned values (every column but the lineage ones). A row repeating values that
    were already published (a daily full snapshot re-delivers every unchanged row) is
    the version it repeats: the version keeps the lineage of its first publication,
    and `_last_delivered_seq` says when it was last delivered.

    Why: the dimension feeds arrive as full snapshots, so without this every employee
    and plan looked new every day. Each day restated every claim of every claimant
    (the facts restate rows whose lookups changed), and every read of the versions
    grew with the number of days delivered rather than with the number of records.

    Incremental: only batches above the highest `_last_delivered_seq` are read; their
    rows are grouped with the stored rows of the same versions and replaced. A full
    refresh gives the same rows: first publication = the lowest publish_seq (then
    line), last delivery = the highest.

    Engine-specific. DuckDB keeps the wide rows out of any sort: a re-delivered version's
    values are the stored row's own (the key hashes them), so only the lineage columns
    of the stored rows are read, and only versions delivered more than once in the run
    are grouped (on narrow columns); the rest pass through joins. A window over the
    delivered and stored wide rows spilled under the memory limit at 20M claims/day
    (README, "Where a 20M day goes").
    PostgreSQL and Spark list the columns (the staged ones, then _version_key and
    _last_delivered_seq, the order DuckDB's stars give) and filter on a row number over
    the delivered and stored rows.
-#}
{% macro distinct_versions(staged) %}
    {{ return(adapter.dispatch('distinct_versions', 'benefits_pipeline')(staged)) }}
{% endmacro %}

{% macro duckdb__distinct_versions(staged) %}
{%- set lineage = ['_publish_seq', '_batch_id', '_source_file', '_ingested_at', '_line_number'] -%}
{%- set values = [] -%}
{%- if execute -%}
    {%- for column in adapter.get_columns_in_relation(staged) -%}
        {%- if column.name not in lineage -%}
            {%- do values.append(adapter.quote(column.name)) -%}
        {%- endif -%}
    {%- endfor -%}
    {%- if values | length == 0 -%}
        {{ exceptions.raise_compiler_error("distinct_versions: no value columns in " ~ staged) }}
    {%- endif -%}
{%- endif %}

with

delivered as {{ materialized() }} (

    {{ delivered_versions(staged, values) }}

),

{% if is_incremental() %}

-- the lineage of the stored versions delivered again (narrow: their values are the
-- delivered rows' own, as the version key hashes them)
stored as (

    select _version_key, {{ lineage | join(', ') }}, _last_delivered_seq
    from {{ this }}
    where _version_key in (select _version_key from delivered)

),

{% endif %}

-- versions delivered more than once among this run's rows (a full refresh, a
-- lookback): their first delivery and their last; most versions come once a run
repeated as (

    select
        _version_key,
        min(_publish_seq) as first_seq,
        arg_min(_line_number, (_publish_seq, _line_number)) as first_line,
        max(_last_delivered_seq) as last_seq
    from delivered
    group by _version_key
    having count(*) > 1

),

first_deliveries as (

    select
        delivered.* replace (
            coalesce(repeated.last_seq, delivered._last_delivered_seq) as _last_delivered_seq
        )
    from delivered
    left join repeated on delivered._version_key = repeated._version_key
    where
        repeated._version_key is null
        or (
            delivered._publish_seq = repeated.first_seq
            and delivered._line_number = repeated.first_line
        )

),

versions as (

    {% if is_incremental() %}
    {%- set stored_first -%}
        (stored._publish_seq < first_deliveries._publish_seq
        or (stored._publish_seq = first_deliveries._publish_seq
            and stored._line_number < first_deliveries._line_number))
    {%- endset %}
    select
        first_deliveries.* replace (
            {%- for column in lineage %}
            case
                when {{ stored_first }} then stored.{{ column }}
                else first_deliveries.{{ column }}
            end as {{ column }},
            {%- endfor %}
            greatest(
                first_deliveries._last_delivered_seq,
                coalesce(stored._last_delivered_seq, 0)
            ) as _last_delivered_seq
        )
    from first_deliveries
    left join stored on first_deliveries._version_key = stored._version_key
    {% else %}
    select * from first_deliveries
    {% endif %}

)

select * from versions
{% endmacro %}

{% macro postgres__distinct_versions(staged) %}
{%- set lineage = ['_publish_seq', '_batch_id', '_source_file', '_ingested_at', '_line_number'] -%}
{%- set staged_columns = [] -%}
{%- set values = [] -%}
{%- for name in relation_column_names(staged) -%}
    {%- do staged_columns.append(adapter.quote(name)) -%}
    {%- if name not in lineage -%}
        {%- do values.append(adapter.quote(name)) -%}
    {%- endif -%}
{%- endfor -%}
{%- if execute and values | length == 0 -%}
    {{ exceptions.raise_compiler_error("distinct_versions: no value columns in " ~ staged) }}
{%- endif -%}
{%- set candidate_columns = (staged_columns + ['_version_key', '_last_delivered_seq']) | join(', ') %}

with

delivered as (

    {{ delivered_versions(staged, values) }}

),

{% if is_incremental() %}

stored as (

    select {{ candidate_columns }}
    from {{ this }}
    where _version_key in (select _version_key from delivered)

),

{% endif %}

candidates as (

    select {{ candidate_columns }} from delivered
    {% if is_incremental() %}
    union all
    select {{ candidate_columns }} from stored
    {% endif %}

),

versions as (

    select
        {{ (staged_columns + ['_version_key']) | join(',\n        ') }},
        max(_last_delivered_seq) over (partition by _version_key) as _last_delivered_seq,
        row_number() over (
            partition by _version_key order by _publish_seq, _line_number
        ) as _version_rank
    from candidates

)

select {{ candidate_columns }}
from versions
where _version_rank = 1
{% endmacro %}

{% macro spark__distinct_versions(staged) %}
    {{ postgres__distinct_versions(staged) }}
{% endmacro %}

{#- The rows of `staged` this run reads, keyed by their version (the hash of `values`):
    the part both engines share. -#}
{% macro delivered_versions(staged, values) %}
    select
        *,
        {{ surrogate_key(values) if values else "''" }} as _version_key,
        _publish_seq as _last_delivered_seq
    from {{ staged }}
    {% if is_incremental() %}
    where _publish_seq > {{ publish_watermark('_last_delivered_seq') }}
    {% endif %}
{% endmacro %}
