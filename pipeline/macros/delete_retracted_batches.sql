{#-
    Post-hook of an incremental staging table: delete the rows of batches that were
    published and then retracted (`monitor reject BATCH --retract`: the ledger keeps
    their publish_seq, the status is no longer 'published'). Retractions are rare, so
    the list is short and the delete, on the integer _publish_seq, skips every row group
    outside it.

    Spark: parquet has no DELETE; the staging table is partitioned by _batch_id there
    (stg_benefits__claims), so a retracted batch's partition is dropped.
-#}
{% macro delete_retracted_batches(feed) %}
    {{ return(adapter.dispatch('delete_retracted_batches', 'benefits_pipeline')(feed)) }}
{% endmacro %}

{% macro default__delete_retracted_batches(feed) %}
    delete from {{ this }}
    where _publish_seq in (
        select cast(publish_seq as bigint)
        from {{ source('benefits', 'ingest_batches') }}
        where feed = '{{ feed }}'
            and status <> 'published'
            and publish_seq is not null
    )
{% endmacro %}

{#- The drops run here, as the hook is rendered (one statement per partition); the hook
    itself is then empty, which dbt skips. -#}
{% macro spark__delete_retracted_batches(feed) %}
    {%- if execute -%}
        {%- set query -%}
            select batch_id
            from {{ source('benefits', 'ingest_batches') }}
            where feed = '{{ feed }}'
                and status <> 'published'
                and publish_seq is not null
        {%- endset -%}
        {%- for batch_id in run_query(query).columns[0].values() -%}
            {%- call statement('drop_retracted_batch') -%}
                alter table {{ this }} drop if exists partition (_batch_id = {{ spark_string(batch_id) }})
            {%- endcall -%}
        {%- endfor -%}
    {%- endif -%}
{% endmacro %}
