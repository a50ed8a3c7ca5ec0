{#-
    PostgreSQL: b-tree indexes on the columns later statements look a table model up
    by, as a post-hook of every model (dbt_project.yml), so that a cycle reads the day's
    rows, not the whole history:
    - `_publish_seq`, where the table has it: the next incremental run's watermark
      filter, and the data tests' touched rows (`+where` in dbt_project.yml);
    - `_enriched_publish_seq`, where the table has it: with `_publish_seq`, the rows the
      monitor's touched-key checks start from (a restated row raises only this one);
    - the `unique_key` (one index over its columns): the merge finds the stored rows of
      the incoming keys, and staging replaces a batch by its id;
    - each column a `relationships` test names on the model: the facts' restatement
      lookups (the stored claims of a changed plan or employee).
    Without them each of those reads is a sequential scan of the table, and a cycle
    slows with every day stored (README, Running on PostgreSQL). DuckDB skips row
    groups by their min/max and scans one column cheaply; an index there would only slow
    every write: nothing on DuckDB and Spark. `create index if not exists`: built once
    (on the first run, or after a full refresh recreates the table), then kept current
    by PostgreSQL.
-#}
{% macro lookup_indexes() -%}
    {{ return(adapter.dispatch('lookup_indexes', 'benefits_pipeline')()) }}
{%- endmacro %}

{% macro default__lookup_indexes() -%}
{%- endmacro %}

{% macro postgres__lookup_indexes() -%}
    {%- if execute and model.config.materialized in ('table', 'incremental') -%}
        {%- set present = adapter.get_columns_in_relation(this) | map(attribute='name')
            | map('lower') | list -%}
        {%- set indexes = [] -%}
        {%- for seq in ['_publish_seq', '_enriched_publish_seq'] if seq in present -%}
            {%- do indexes.append([seq]) -%}
        {%- endfor -%}
        {%- set unique_key = model.config.get('unique_key') -%}
        {%- set key = [unique_key] if unique_key is string else (unique_key or []) -%}
        {%- if key and key not in indexes -%}
            {%- do indexes.append(key) -%}
        {%- endif -%}
        {%- for node in graph.nodes.values() -%}
            {%- if node.resource_type == 'test'
                and node.get('attached_node') == model.unique_id
                and (node.get('test_metadata') or {}).get('name') == 'relationships' -%}
                {%- set column = node.test_metadata.kwargs.get('column_name') -%}
                {%- if column and column | lower in present and [column] not in indexes -%}
                    {%- do indexes.append([column]) -%}
                {%- endif -%}
            {%- endif -%}
        {%- endfor -%}
        {%- for columns in indexes -%}
            {%- set name = this.identifier ~ '__' ~ columns | join('__') | replace('"', '')
                ~ '__idx' -%}
            {#- past PostgreSQL's 63 characters a cut name could match another index's,
                and `if not exists` would skip this one: cut, plus a hash of the whole -#}
            {%- if name | length > 63 -%}
                {%- set name = name[:54] ~ '_' ~ local_md5(name)[:8] -%}
            {%- endif %}
        create index if not exists {{ adapter.quote(name) }}
            on {{ this }} ({{ columns | join(', ') }});
        {%- endfor -%}
    {%- endif -%}
{%- endmacro %}
