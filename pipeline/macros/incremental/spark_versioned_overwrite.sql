{#-
    `versioned_delete_insert` on Spark (parquet tables, no DELETE, no MERGE, no
    transactions): the stored rows of the incoming keys are replaced by rewriting the
    partitions that hold them. The model is partitioned by its date (or batch) column on
    Spark (`partition_by`, one column). Per run:

        set spark.sql.sources.partitionOverwriteMode = DYNAMIC;
        cache table <t>__dbt_stored as                   -- the stored rows of the
            select key, <partition>[, updated_at, _publish_seq]   incoming keys, by key,
            from <t> left semi join <incoming view> on key;       in the whole table
        cache table <t>__dbt_incoming as                 -- the version guard: an incoming
            select * from <incoming view>                   row older than the stored row
            left anti join <t>__dbt_stored on key and not <not older>;  of its key is dropped
        -- partitions: those of the incoming rows, and those holding a stored row of a
        -- key still incoming (a claim whose service_date moved leaves its old one)
        alter table <t> drop if exists partition (...);  -- each one left with no row
        insert overwrite table <t> partition (<partition>)
            select ... from <t> left anti join <t>__dbt_incoming on key   -- kept rows
            where <partition> in (<those partitions>)
            union all
            select ... from <t>__dbt_incoming;
        drop view <t>__dbt_stored; drop view <t>__dbt_incoming;   -- (uncaches them)

    Why cached: the model's view reads the table itself (the watermark's restatements,
    the versions' stored rows), and each statement would re-run it, the later ones
    against the table the earlier ones rewrote. The cache holds the rows as they were
    before the first write (MEMORY_AND_DISK: evicted blocks spill, they are not
    recomputed). Why drop: a dynamic overwrite replaces only the partitions its rows
    land in, so a partition whose last row moved away would keep its old files.

    Not atomic: Spark has no transactions. Each partition is swapped in whole when the
    overwrite commits, but a run killed between the drops and the overwrite leaves
    the moved keys out until the next run or a --full-refresh re-merges them.
    `incremental_predicates` narrow the read of the stored rows (alias DBT_INTERNAL_DEST).
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
    {%- set stored = target.identifier ~ '__dbt_stored' -%}
    {%- set incoming = target.identifier ~ '__dbt_incoming' -%}
    {%- set dest_cols_csv = get_quoted_csv(
        adapter.get_columns_in_relation(target) | map(attribute='name')) -%}

    {%- call statement('overwrite_mode') -%}
        set spark.sql.sources.partitionOverwriteMode = DYNAMIC
    {%- endcall -%}

    {%- call statement('cache_stored') -%}
        cache table {{ stored }} as
        select
            {% for key in keys -%}
            DBT_INTERNAL_DEST.{{ key }},
            {% endfor -%}
            {%- if guard -%}
            DBT_INTERNAL_DEST.updated_at,
            DBT_INTERNAL_DEST._publish_seq,
            {% endif -%}
            DBT_INTERNAL_DEST.{{ part }}
        from {{ target }} as DBT_INTERNAL_DEST
        left semi join {{ source }} as DBT_INTERNAL_SOURCE
            on {{ same_key(keys, 'DBT_INTERNAL_SOURCE', 'DBT_INTERNAL_DEST') }}
        {%- if predicates %}
        where ({{ predicates | join(') and (') }})
        {%- endif %}
    {%- endcall -%}

    {%- call statement('cache_incoming') -%}
        cache table {{ incoming }} as
        select incoming.*
        from {{ source }} as incoming
        {%- if guard %}
        left anti join {{ stored }} as stored
            on {{ same_key(keys, 'incoming', 'stored') }}
                and not {{ is_not_older_than('incoming', 'stored') }}
        {%- endif %}
    {%- endcall -%}

    {#- partitions (as text, none for NULL) of the incoming rows, and of the stored rows
        of the keys still incoming -#}
    {%- set incoming_parts = spark_partition_values(
        'select ' ~ part ~ ' from ' ~ incoming, part) -%}
    {%- set moved_parts = spark_partition_values(
        'select stored.' ~ part ~ ' from ' ~ stored ~ ' as stored left semi join ' ~ incoming
        ~ ' as incoming on ' ~ same_key(keys, 'incoming', 'stored'), part) -%}
    {%- set affected = incoming_parts + (moved_parts | reject('in', incoming_parts) | list) -%}

    {%- if affected -%}
        {#- a partition that held only moved rows and gets no incoming row is dropped -#}
        {%- set only_moved = moved_parts | reject('in', incoming_parts) | list -%}
        {%- if only_moved -%}
            {%- set kept_parts = spark_partition_values(
                'select DBT_INTERNAL_DEST.' ~ part ~ ' from ' ~ target
                ~ ' as DBT_INTERNAL_DEST left anti join ' ~ incoming ~ ' as incoming on '
                ~ same_key(keys, 'incoming', 'DBT_INTERNAL_DEST') ~ ' where '
                ~ spark_partition_filter('DBT_INTERNAL_DEST.' ~ part, only_moved), part) -%}
            {%- for value in only_moved if value not in kept_parts -%}
                {%- call statement('drop_emptied_partition') -%}
                    alter table {{ target }} drop if exists partition (
                        {{ part }} = {{ 'null' if value is none else spark_string(value) }}
                    )
                {%- endcall -%}
            {%- endfor -%}
        {%- endif -%}

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

    {%- call statement('uncache_stored') -%}
        drop view if exists {{ stored }}
    {%- endcall -%}

    {#- the materialization's `main` statement: the last one -#}
    {{ return('drop view if exists ' ~ incoming) }}
{% endmacro %}


{#- The distinct values of `column` in `query`'s rows, as text (none for NULL). -#}
{% macro spark_partition_values(query, column) %}
    {%- set sql = 'select distinct cast(' ~ column ~ ' as string) from (' ~ query ~ ') as parts' -%}
    {{ return(run_query(sql).columns[0].values() | list) }}
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
    {{ return(dbt_spark.dbt_spark_validate_get_incremental_strategy(raw_strategy, file_format)) }}
{% endmacro %}


{% macro dbt_spark_get_incremental_sql(
    strategy, source, target, existing, unique_key, incremental_predicates
) %}
    {%- if strategy == 'versioned_delete_insert' -%}
        {{ return(get_incremental_versioned_delete_insert_sql({
            'target_relation': target, 'temp_relation': source, 'unique_key': unique_key,
            'dest_columns': none, 'incremental_predicates': incremental_predicates})) }}
    {%- endif -%}
    {{ return(dbt_spark.dbt_spark_get_incremental_sql(
        strategy, source, target, existing, unique_key, incremental_predicates)) }}
{% endmacro %}
