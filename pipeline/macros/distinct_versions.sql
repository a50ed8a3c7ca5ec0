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

    Engine-specific: DuckDB's `union all by name`, `* exclude` and QUALIFY; PostgreSQL
    and Spark list the columns (the staged ones, then _version_key and
    _last_delivered_seq, the order DuckDB's stars give) and filter on a row number.
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

delivered as (

    {{ delivered_versions(staged, values) }}

),

{% if is_incremental() %}

-- stored versions delivered again: grouped with the new rows so the first
-- publication stays the one kept (and a lookback re-read never lowers the last one)
stored as (

    select *
    from {{ this }}
    where _version_key in (select _version_key from delivered)

),

{% endif %}

candidates as (

    select * from delivered
    {% if is_incremental() %}
    union all by name
    select * from stored
    {% endif %}

),

versions as (

    select
        * exclude (_last_delivered_seq),
        max(_last_delivered_seq) over (partition by _version_key) as _last_delivered_seq
    from candidates
    qualify row_number() over (
        partition by _version_key order by _publish_seq, _line_number
    ) = 1

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
