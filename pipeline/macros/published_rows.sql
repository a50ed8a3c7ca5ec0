{#-
    The rows of `source('benefits', feed)` that staging may see: only rows of
    published batches (carrying the batch's publish_seq as `_publish_seq`), with exact
    duplicate lines of one batch collapsed to the first line.

    `_publish_seq` is a grouping column, so the facts' watermark filter on it is pushed
    below the dedupe (and down to the batch scan). A repeat in a later batch is a later
    version of the record and is resolved by the latest-version rule in the facts.
-#}
{% macro published_rows(feed) %}
    select
        * exclude (_line_number, _ingested_at),
        min(_line_number) as _line_number,
        min(_ingested_at) as _ingested_at
    from (
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
    ) as published
    group by all
{% endmacro %}
