{#-
    The rows of `source('benefits', feed)` that staging may see: only rows of
    published batches (carrying the batch's publish_seq as `_publish_seq`), with exact
    duplicate lines of one batch collapsed to the first line.

    `_publish_seq` is a grouping column, so the facts' watermark filter on it is pushed
    below the dedupe (and down to the batch scan). A repeat in a later batch is a later
    version of the record and is resolved by the latest-version rule in the facts.

    Engine-specific: DuckDB's `* exclude` and `group by all`; PostgreSQL and Spark list
    the raw table's columns in the same order.
-#}
{% macro published_rows(feed) %}
    {{ return(adapter.dispatch('published_rows', 'benefits_pipeline')(feed)) }}
{% endmacro %}

{% macro duckdb__published_rows(feed) %}
    select
        * exclude (_line_number, _ingested_at),
        min(_line_number) as _line_number,
        min(_ingested_at) as _ingested_at
    from (
        {{ published_source_rows(feed) }}
    ) as published
    group by all
{% endmacro %}

{% macro postgres__published_rows(feed) %}
    {#- the source's own table: in a unit test source() names the fixture CTE and the
        unit test manifest has no graph, so the table is found in the schema the
        sources file names (`raw`), where unit tests need it to exist anyway -#}
    {%- set table = none -%}
    {%- if execute -%}
        {%- set nodes = (graph.get('sources') or {}).values()
            | selectattr('source_name', 'equalto', 'benefits')
            | selectattr('name', 'equalto', feed) | list -%}
        {%- set table = api.Relation.create(
            database=nodes[0].database if nodes else target.get('database'),
            schema=nodes[0].schema if nodes else 'raw',
            identifier=nodes[0].identifier if nodes else feed
        ) -%}
    {%- endif -%}
    {%- set grouped = [] -%}
    {%- for name in (relation_column_names(table) if table is not none else []) -%}
        {%- if name not in ('_line_number', '_ingested_at') -%}
            {%- do grouped.append('published.' ~ adapter.quote(name)) -%}
        {%- endif -%}
    {%- endfor -%}
    {%- do grouped.append('published._publish_seq') -%}
    select
        {{ grouped | join(',\n        ') }},
        min(published._line_number) as _line_number,
        min(published._ingested_at) as _ingested_at
    from (
        {{ published_source_rows(feed) }}
    ) as published
    group by {{ grouped | join(', ') }}
{% endmacro %}

{% macro spark__published_rows(feed) %}
    {{ postgres__published_rows(feed) }}
{% endmacro %}

{#- Every row of `source('benefits', feed)` in a published batch, with the batch's
    publish_seq as `_publish_seq`: the part both engines share. -#}
{% macro published_source_rows(feed) %}
    select
        source.*,
        published_batches.publish_seq as _publish_seq
    from {{ source('benefits', feed) }} as source
    inner join (
        select
            batch_id,
            cast(publish_seq as bigint) as publish_seq
        from {{ source('benefits', 'ingest_batches') }}
        where status = 'published'
            and feed = '{{ feed }}'
    ) as published_batches
        on source._batch_id = published_batches.batch_id
{% endmacro %}

{#- The ids of the batches of `feed` published above `above` (a publish_seq): the
    batches published_rows_to_stage may bring in a run whose watermark is `above`, which
    the replace_batches strategy deletes before inserting them. -#}
{% macro published_batch_ids(feed, above) %}
    select batch_id
    from {{ source('benefits', 'ingest_batches') }}
    where status = 'published'
        and feed = '{{ feed }}'
        and cast(publish_seq as bigint) > {{ above }}
{% endmacro %}

{#- The rows an incremental staging table takes in this run: `published_rows(feed)` of
    the batches above the table's watermark (every published batch on a first run or
    --full-refresh). `_publish_seq` is a grouping column of published_rows, so the
    filter reaches the raw scan, below the group-by. -#}
{% macro published_rows_to_stage(feed) %}
    {%- set watermark = publish_watermark() if is_incremental() else none %}
    select * from ({{ published_rows(feed) }}) as published
    {% if is_incremental() %}
    where _publish_seq > {{ watermark }}
    {% endif %}
{% endmacro %}
