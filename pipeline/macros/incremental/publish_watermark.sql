{#-
    Lowest `_publish_seq` an incremental run reads: the highest batch already in the
    fact minus `lookback_batches`. Batches, not business dates: publish_seq is
    global and increases at publish time, so every batch published after the last
    run is above the fact's maximum, whatever dates its rows carry; the lookback
    re-reads a few batches so a batch published while that run was reading is not
    lost. Only meaningful inside `{% if is_incremental() %}`.
-#}
{% macro publish_watermark() -%}
    {%- set lookback = var('lookback_batches', 3) | int -%}
    {%- if lookback < 0 -%}
        {{ exceptions.raise_compiler_error("lookback_batches must be >= 0, got " ~ lookback) }}
    {%- endif -%}
    ((select coalesce(max(_publish_seq), 0) from {{ this }}) - {{ lookback }})
{%- endmacro %}
