{#-
    Lowest `_publish_seq` an incremental run reads, exclusive:
    (select coalesce(max(_publish_seq), 0) from {{ this }}) - var('lookback_batches').

    Batches, not business dates: publish_seq is global and increases at publish time,
    so every batch published after the last run is above the fact's maximum,
    whatever dates its rows carry; the lookback re-reads a few batches so a batch
    published while that run was reading is not lost (re-merging is idempotent).

    The maximum is read before the model runs and rendered as a literal. As a scalar
    subquery DuckDB evaluates the comparison as a join after the staging views, so
    the filter would not reach the raw scan and every run would clean all history.
    Only meaningful inside `{% if is_incremental() %}`. `column` names another
    watermark column (the versions models track their last delivery).
-#}
{% macro publish_watermark(column='_publish_seq') -%}
    {%- set lookback = var('lookback_batches', 3) | int -%}
    {%- if lookback < 0 -%}
        {{ exceptions.raise_compiler_error("lookback_batches must be >= 0, got " ~ lookback) }}
    {%- endif -%}
    {%- if execute -%}
        {%- set query = 'select coalesce(max(' ~ column ~ '), 0) from ' ~ this -%}
        {%- set max_seq = run_query(query).columns[0].values()[0] | int -%}
        {{ max_seq - lookback }} /* max({{ column }}) in {{ this.identifier }} = {{ max_seq }}, lookback_batches = {{ lookback }} */
    {%- else -%}
        0
    {%- endif -%}
{%- endmacro %}
