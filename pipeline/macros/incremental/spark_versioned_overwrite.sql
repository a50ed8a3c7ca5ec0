{#-
    `versioned_delete_insert` on Spark (parquet tables, no DELETE, no MERGE, no
    transactions): the stored rows of the incoming keys are replaced by rewriting the
    partitions that hold them. The model is partitioned by its date (or batch) column on
    Spark (`partition_by`, one column). Per run:

        set spark.sql.sources.partitionOverwriteMode = DYNAMIC;
        create table <t>__dbt_incoming using parquet as   -- the incoming rows, less
            select * from <incoming view>                    those older than the stored
            left anti join <t> on key and not <incoming not older than stored>;  row of their key
        select <partition>, bool_or(incoming)          -- the partitions to rewrite: of
            from (incoming rows union all                 the incoming rows, and of the
                  <t>'s rows left semi join incoming on key)  stored rows of their keys,
            group by <partition>;                         found by key in the whole table
        alter table <t> drop if exists partition (...); -- one that held only moved rows
                                                        -- and keeps none (rare)
        insert overwrite table <t> partition (<partition>)
            select ... from <t> left anti join <t>__dbt_incoming on key   -- kept rows
            where <partition> in (<the partitions>)
            union all
            select ... from <t>__dbt_incoming;
        drop table <t>__dbt_incoming;

    A claim whose service_date moved has its stored row found by key and its old
    partition rewritten without it; a partition left with no row at all is dropped,
    since a dynamic overwrite replaces only the partitions its rows land in.

    Why the incoming rows are written once to a scratch table (in the model's schema,
    dropped at the end, and before the run if a killed run left it): the model's view
    reads the table itself (the watermark's restatements, the versions' stored rows), so
    every statement reading the view would re-run it, the overwrite against the table
    it is rewriting. A cached view (`cache table`) holds the rows too, but each
    statement that reads it re-analyzes the model's whole view stack and matches it
    against the cache: measured on tests/test_dbt_spark.py's day 2 (a loaded 2-core
    machine), 192 s with cached views, 48 s with the scratch table.

    Not atomic: Spark has no transactions. A run killed before the overwrite commits
    (after a drop, say) leaves the fact's watermark where it was, so the next run re-reads
    the same batches and merges them again. The commit itself swaps partition after
    partition: a crash inside it can leave some rewritten and others not (a moved key
    then in both), which `--full-refresh` repairs.
    `incremental_predicates` narrow the reads of the stored rows (alias DBT_INTERNAL_DEST).
-#}
{% macro spark__versioned_delete_insert_sql(arg_dict) %}
    {%- set target = arg_dict['target_relation'] -%}
    {%- set source = arg_dict['temp_relation'] -%}
    {%- set unique_key = arg_dict['unique_key'] -%}
    {%- set keys = [unique_key] if unique_key is string else (unique_key or []) -%}
    {%- set partition_by = config.get('partition_by') -%}
    {%- set partitions = [partition_by] if partition_by is string else (partition_by or []) -%}
    {%- if keys | length == 0 or partitions | length != 1 -%}
        {{ exceptions.raise_compiler_error(
            "versioned_delete_insert on Spark needs a unique_key and one partition_by column") }}
    {%- endif -%}
    {%- set part = partitions[0] -%}
    {%- set guard = config.get('version_guard', false) -%}
    {%- set predicates = predicate_list(arg_dict['incremental_predicates']) -%}
    {%- set narrowing = (' and (' ~ predicates | join(') and (') ~ ')') if predicates else '' -%}
    {%- set incoming = target.incorporate(path={'identifier': target.identifier ~ '__dbt_incoming'}) -%}
    {%- set dest_cols_csv = get_quoted_csv(
        adapter.get_columns_in_relation(target) | map(attribute='name')) -%}

    {%- call statement('overwrite_mode') -%}
        set spark.sql.sources.partitionOverwriteMode = DYNAMIC
    {%- endcall -%}

    {%- call statement('drop_incoming') -%}
        drop table if exists {{ incoming }}
    {%- endcall -%}

    {%- call statement('write_incoming') -%}
        create table {{ incoming }} using parquet as
        select incoming.*
        from {{ source }} as incoming
        {%- if guard %}
        left anti join {{ target }} as DBT_INTERNAL_DEST
            on {{ same_key(keys, 'incoming', 'DBT_INTERNAL_DEST') }}
                and not {{ is_not_older_than('incoming', 'DBT_INTERNAL_DEST') }}
                {{- narrowing }}
        {%- endif %}
    {%- endcall -%}

    {#- the partitions to rewrite (as text, none for NULL): true when an incoming row
        lands there, false when it only holds stored rows of incoming keys -#}
    {%- set query -%}
        select cast({{ part }} as string), bool_or(is_incoming)
        from (
            select {{ part }}, true as is_incoming from {{ incoming }}
            union all
            select DBT_INTERNAL_DEST.{{ part }}, false as is_incoming
            from {{ target }} as DBT_INTERNAL_DEST
            left semi join {{ incoming }} as incoming
                on {{ same_key(keys, 'incoming', 'DBT_INTERNAL_DEST') }}
            {%- if predicates %}
            where ({{ predicates | join(') and (') }})
            {%- endif %}
        ) as parts
        group by 1
    {%- endset -%}
    {%- set rows = run_query(query).rows if execute else [] -%}
    {%- set affected = rows | map(attribute=0) | list -%}
    {%- set only_moved = rows | rejectattr(1) | map(attribute=0) | list -%}

    {%- if only_moved -%}
        {%- set kept -%}
            select distinct cast(DBT_INTERNAL_DEST.{{ part }} as string)
            from {{ target }} as DBT_INTERNAL_DEST
            left anti join {{ incoming }} as incoming
                on {{ same_key(keys, 'incoming', 'DBT_INTERNAL_DEST') }}
            where {{ spark_partition_filter('DBT_INTERNAL_DEST.' ~ part, only_moved) }}
        {%- endset -%}
        {%- set kept_parts = run_query(kept).columns[0].values() | list -%}
        {%- for value in only_moved if value not in kept_parts -%}
            {%- call statement('drop_emptied_partition') -%}
                alter table {{ target }} drop if exists partition (
                    {{ part }} = {{ 'null' if value is none else spark_string(value) }}
                )
            {%- endcall -%}
        {%- endfor -%}
    {%- endif -%}

    {%- if affected -%}
        {%- call statement('overwrite_partitions') -%}
            insert overwrite table {{ target }} partition ({{ part }})
            select {{ dest_cols_csv }}
            from {{ target }} as DBT_INTERNAL_DEST
            left anti join {{ incoming }} as incoming
                on {{ same_key(keys, 'incoming', 'DBT_INTERNAL_DEST') }}
            where {{ spark_partition_filter('DBT_INTERNAL_DEST.' ~ part, affected) }}
            union all
            select {{ dest_cols_csv }}
            from {{ incoming }}
        {%- endcall -%}
    {%- endif -%}

    {#- the materialization's `main` statement: the last one -#}
    {{ return('drop table if exists ' ~ incoming) }}
{% endmacro %}


{#- `column` in the partitions `values` (as text, none for NULL): pruned to them. -#}
{% macro spark_partition_filter(column, values) -%}
    {%- set listed = values | reject('none') | map('string') | list -%}
    {%- set parts = [] -%}
    {%- if listed -%}
        {%- set literals = [] -%}
        {%- for value in listed -%}
            {%- do literals.append(spark_string(value)) -%}
        {%- endfor -%}
        {%- do parts.append('cast(' ~ column ~ ' as string) in (' ~ literals | join(', ') ~ ')') -%}
    {%- endif -%}
    {%- if none in values -%}
        {%- do parts.append(column ~ ' is null') -%}
    {%- endif -%}
    ({{ parts | join(' or ') }})
{%- endmacro %}


{#-
    dbt-spark accepts only its own strategies for parquet: `versioned_delete_insert` is
    the project's (spark__versioned_delete_insert_sql above), the rest as dbt-spark has it.
-#}
{% macro dbt_spark_validate_get_incremental_strategy(raw_strategy, file_format) %}
    {%- if raw_strategy == 'versioned_delete_insert' -%}
        {{ return(raw_strategy) }}
    {%- endif -%}
    {{ return(dbt.dbt_spark_validate_get_incremental_strategy(raw_strategy, file_format)) }}
{% endmacro %}


{% macro dbt_spark_get_incremental_sql(
    strategy, source, target, existing, unique_key, incremental_predicates
) %}
    {%- if strategy == 'versioned_delete_insert' -%}
        {{ return(get_incremental_versioned_delete_insert_sql({
            'target_relation': target, 'temp_relation': source, 'unique_key': unique_key,
            'dest_columns': none, 'incremental_predicates': incremental_predicates})) }}
    {%- endif -%}
    {{ return(dbt.dbt_spark_get_incremental_sql(
        strategy, source, target, existing, unique_key, incremental_predicates)) }}
{% endmacro %}
