{#-
    Post-hook of an incremental staging table: delete the rows of batches that were
    published and then retracted (`monitor reject BATCH --retract`: the ledger keeps
    their publish_seq, the status is no longer 'published'). Retractions are rare, so
    the list is short and the delete, on the integer _publish_seq, skips every row group
    outside it.
-#}
{% macro delete_retracted_batches(feed) %}
    delete from {{ this }}
    where _publish_seq in (
        select cast(publish_seq as bigint)
        from {{ source('benefits', 'ingest_batches') }}
        where feed = '{{ feed }}'
            and status <> 'published'
            and publish_seq is not null
    )
{% endmacro %}
