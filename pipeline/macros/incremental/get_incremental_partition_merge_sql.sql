{#-
    Incremental strategy `partition_merge`: DuckDB MERGE on `unique_key`, restricted
    to the target rows whose `partition_column` (a date) is >= the smallest one
    among the incoming rows.

    DuckDB has no table partitions; its row groups carry min/max zone maps. The
    facts are written ordered by their partition column, so a constant range filter
    on it skips whole row groups. The built-in `merge` strategy can only add
    predicates known at compile time, and a subquery on the incoming table would
    not be pushed into the target scan; so this strategy reads the incoming minimum
    from the temp table first and renders it as a literal:

        ON (src.claim_id = dest.claim_id)
           AND ((dest.service_date >= cast('2026-01-20' as date) or dest.service_date is null))

    Safe only because a record's partition column never changes (contracts.md:
    updates never change a claim's service_date or a plan's start_date). So the
    target row that matches an incoming row has the incoming row's partition value,
    which is >= the minimum. A predicate in MERGE's ON that excluded a matching
    target row would turn the update into an insert and duplicate the key; should
    the contract ever be broken that way, the facts' `unique` test fails the build.

    For a partition column the contract does not freeze (employees' hire_date may be
    corrected), set `partition_bound_from_target=true`: the bound then also covers
    the current partition value of every target row whose key is incoming (one extra
    key lookup, fine for dimension-sized tables), which keeps the merge exact.
-#}
{% macro get_incremental_partition_merge_sql(arg_dict) %}
    {%- set partition_column = config.get('partition_column') -%}
    {%- set predicates = [] + (normalize_incremental_predicates(arg_dict['incremental_predicates']) or []) -%}

    {%- if partition_column -%}
        {%- set bound = partition_lower_bound(
            arg_dict['temp_relation'],
            partition_column,
            arg_dict['target_relation'] if config.get('partition_bound_from_target', false) else none,
            arg_dict['unique_key']
        ) -%}
        {%- set dest_column = 'DBT_INTERNAL_DEST.' ~ adapter.quote(partition_column) -%}
        {%- if bound is none -%}
            {#- no incoming row has a partition value: only NULL-partition rows can match -#}
            {%- do predicates.append(dest_column ~ ' is null') -%}
        {%- else -%}
            {%- do predicates.append(
                '(' ~ dest_column ~ " >= cast('" ~ bound.value ~ "' as " ~ bound.data_type ~ ')'
                ~ ' or ' ~ dest_column ~ ' is null)'
            ) -%}
        {%- endif -%}
    {%- endif -%}

    {{ return(get_merge_sql(
        arg_dict['target_relation'],
        arg_dict['temp_relation'],
        arg_dict['unique_key'],
        arg_dict['dest_columns'],
        predicates
    )) }}
{% endmacro %}


{#-
    Smallest non-null value of `column` among the incoming rows (and, with `target`,
    among the target rows sharing an incoming `unique_key`) as {value, data_type},
    or none when there is no such value.
-#}
{% macro partition_lower_bound(incoming, column, target=none, unique_key=none) %}
    {%- set quoted = adapter.quote(column) -%}
    {%- set keys = [unique_key] if unique_key is string else (unique_key or []) -%}
    {%- set query -%}
        with bounds as (
            select {{ quoted }} as bound from {{ incoming }}
            {%- if target is not none and keys | length > 0 %}
            union all
            select target_rows.{{ quoted }} from {{ target }} as target_rows
            semi join {{ incoming }} as incoming_rows
                on {% for key in keys -%}
                    target_rows.{{ key }} = incoming_rows.{{ key }}{{ ' and ' if not loop.last }}
                {%- endfor %}
            {%- endif %}
        )
        select cast(min(bound) as varchar) as lower_bound, any_value(typeof(bound)) as data_type
        from bounds
        where bound is not null
    {%- endset -%}
    {%- set row = run_query(query).rows[0] -%}
    {%- if row[0] is none -%}
        {{ return(none) }}
    {%- endif -%}
    {{ return({'value': row[0] | replace("'", "''"), 'data_type': row[1]}) }}
{% endmacro %}
