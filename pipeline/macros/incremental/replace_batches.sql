{#-
    Incremental strategy `replace_batches`, for a staging table keyed by batch
    (`unique_key` names the batch column): the stored rows of every batch this run may
    bring are deleted, then the incoming rows are inserted.

    The batches a run may bring are known without reading its rows: the published
    batches of the model's feed (`meta.feed`) above the table's watermark, which is what
    published_rows_to_stage selects. dbt's delete+insert finds them by reading the
    incoming rows, so it needs them written to a temporary table first; here nothing
    reads them before the insert, and on DuckDB the incoming relation is a temporary
    view (duckdb__create_table_as below): the day's rows are cleaned and written once,
    into the table, instead of into a temporary table that spills past memory_limit and
    is then copied (README, "Where a 20M day goes").

    A batch retracted after it was staged is deleted by the model's post-hook
    (delete_retracted_batches); a batch published again later comes back under its new
    publish_seq, above the watermark, and replaces whatever the table held of it.
    Spark uses insert_overwrite of `_batch_id` partitions instead (dbt_project.yml).
-#}
{% macro get_incremental_replace_batches_sql(arg_dict) %}
    {%- set feed = (config.get('meta') or {}).get('feed') -%}
    {%- if not feed -%}
        {{ exceptions.raise_compiler_error(
            "incremental_strategy 'replace_batches' needs the model's meta.feed: the feed "
            ~ "whose published batches it stages (" ~ this ~ ")") }}
    {%- endif -%}
    {%- set batch_column = arg_dict['unique_key'] -%}
    {%- if batch_column is not string -%}
        {{ exceptions.raise_compiler_error(
            "incremental_strategy 'replace_batches' needs unique_key to name the batch "
            ~ "column, got " ~ batch_column ~ " (" ~ this ~ ")") }}
    {%- endif -%}
    {%- set columns = get_quoted_csv(arg_dict['dest_columns'] | map(attribute='name')) -%}
    delete from {{ arg_dict['target_relation'] }}
    where {{ batch_column }} in (
        {{ published_batch_ids(feed, publish_watermark()) }}
    );

    insert into {{ arg_dict['target_relation'] }} ({{ columns }})
    select {{ columns }}
    from {{ arg_dict['temp_relation'] }}
{% endmacro %}

{#-
    DuckDB: the incoming rows of a `replace_batches` model as a temporary view, read
    once by the strategy's insert. Every other table is created as dbt-duckdb does.
    The view is replaced if a run in the same session left one behind.
-#}
{% macro duckdb__create_table_as(temporary, relation, compiled_code, language='sql',
                                 partitioned_by=none, sorted_by=none) -%}
    {%- if temporary and language == 'sql'
            and config.get('incremental_strategy') == 'replace_batches' -%}
        create or replace temporary view {{ relation.include(database=false, schema=false) }} as (
            {{ compiled_code }}
        )
    {%- else -%}
        {{ dbt.duckdb__create_table_as(temporary, relation, compiled_code, language,
                                       partitioned_by=partitioned_by, sorted_by=sorted_by) }}
    {%- endif -%}
{%- endmacro %}
