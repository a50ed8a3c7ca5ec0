{#-
    Incremental strategy `versioned_delete_insert`: replace the target rows whose
    `unique_key` is incoming with the incoming rows. With `version_guard=true`, an
    incoming row older than the stored row of its key (version_order(): a late
    re-delivery of an old record) is dropped first, so it never overwrites the newer
    row. All statements run in the model's transaction, so readers see the old or the
    new table, never a half-merged one. On DuckDB:

        create temporary table <incoming>__stored as      -- one scan of the target
            select rowid as _stored_rowid, claim_id, updated_at, _publish_seq
            from fct_claims semi join <incoming> on claim_id;
        delete from <incoming> using <incoming>__stored   -- the version guard
            where <same claim_id> and not <incoming not older than stored>;
        delete from fct_claims where rowid in (<stored rows whose key is still incoming>);
        drop table <incoming>__stored;
        insert into fct_claims (...) select ... from <incoming>;

    Why one scan: the target has no index, so finding the stored rows of the incoming
    keys reads the target's key column whatever the day's volume. The previous strategy
    read it three times per run (the model's version guard, a lower bound on the
    partition column of the stored rows, and the delete): the whole of fct_claims'
    growth with history after the restatement lookups (README, Results). Here the
    version guard and the delete share one scan: the delete goes by row id, so it needs
    no predicate on a partition column for pruning or for exactness (a claim whose
    service_date is corrected to a later date still has its stored row found by key;
    tests/test_dbt_project.py moves a claim and a plan).

    Why delete+insert rather than MERGE: the model has already reduced the incoming rows
    to one per key, so a plain replace is exact, and on DuckDB 2.0 it measured faster
    than MERGE ... UPDATE BY NAME for the same rows (MERGE updates are deletes plus
    inserts inside anyway; README, Results).

    Engine-specific (adapter.dispatch): DuckDB deletes by `rowid`. PostgreSQL runs the same
    statements with `ctid` as the row id, after locking the target against other writers
    (EXCLUSIVE: readers go on) so that no row moves between the read and the delete; it
    reads the stored rows of the incoming keys by key lookup once the target is large
    against the day (stored_rows_of), and fetches the doomed rows by TID (row_id_among),
    so neither reads more of the target than it needs. Any other adapter deletes by a
    key join (default__).

    With one key column, on DuckDB and PostgreSQL, the target rows considered are bounded by
    the incoming keys' lowest and highest value (incoming_key_range): DuckDB's zone maps and
    PostgreSQL's b-tree on the key (lookup_indexes) then read the range, not the whole
    target. `incremental_predicates` (optional) narrow them further, as for dbt's own
    strategies (alias DBT_INTERNAL_DEST).
-#}
{% macro get_incremental_versioned_delete_insert_sql(arg_dict) %}
    {{ return(adapter.dispatch('versioned_delete_insert_sql', 'benefits_pipeline')(arg_dict)) }}
{% endmacro %}

{% macro duckdb__versioned_delete_insert_sql(arg_dict) %}
    {%- set predicates = normalize_incremental_predicates(arg_dict['incremental_predicates']) -%}
    {{ return(versioned_delete_insert(arg_dict, predicates, row_id='rowid', key_range=true)) }}
{% endmacro %}

{% macro postgres__versioned_delete_insert_sql(arg_dict) %}
    {%- set sql -%}
    lock table {{ arg_dict['target_relation'] }} in exclusive mode;
    {{ versioned_delete_insert(
        arg_dict, predicate_list(arg_dict['incremental_predicates']), row_id='ctid', key_range=true
    ) }}
    {%- endset -%}
    {{ return(sql) }}
{% endmacro %}

{% macro default__versioned_delete_insert_sql(arg_dict) %}
    {{ return(versioned_delete_insert(
        arg_dict, predicate_list(arg_dict['incremental_predicates']), row_id=none, key_range=false
    )) }}
{% endmacro %}

{#-
    The statements: `predicates` (a list) narrow the read of the target, `row_id` names
    the engine's physical row id column (none: delete by key), `key_range` adds
    incoming_key_range's bounds to the predicates.
-#}
{% macro versioned_delete_insert(arg_dict, incremental_predicates, row_id, key_range) %}
    {%- set target = arg_dict['target_relation'] -%}
    {%- set source = arg_dict['temp_relation'] -%}
    {%- set unique_key = arg_dict['unique_key'] -%}
    {%- set keys = [unique_key] if unique_key is string else (unique_key or []) -%}
    {%- if keys | length == 0 -%}
        {{ exceptions.raise_compiler_error("versioned_delete_insert needs a unique_key") }}
    {%- endif -%}
    {%- set guard = config.get('version_guard', false) -%}
    {%- set by_rowid = row_id is not none -%}
    {%- set predicates = [] + (incremental_predicates or []) -%}
    {%- if key_range and keys | length == 1 -%}
        {%- set key_range = incoming_key_range(source, keys[0]) -%}
        {%- if key_range is not none -%}
            {%- do predicates.append(
                'DBT_INTERNAL_DEST.' ~ keys[0] ~ " between cast('" ~ key_range.low ~ "' as "
                ~ key_range.data_type ~ ") and cast('" ~ key_range.high ~ "' as "
                ~ key_range.data_type ~ ')'
            ) -%}
        {%- endif -%}
    {%- endif %}
    {#- the predicates as one condition, for the read of the target and the key delete -#}
    {%- set narrowing = (' and (' ~ predicates | join(') and (') ~ ')') if predicates else '' -%}
    {%- set stored = source.incorporate(path={'identifier': source.identifier ~ '__stored'}) -%}
    {#- without row ids the stored rows are only needed by the guard -#}
    {%- set keep_stored = by_rowid or guard -%}
    {%- set dest_cols_csv = get_quoted_csv(arg_dict['dest_columns'] | map(attribute='name')) -%}

    {% if keep_stored -%}
    create temporary table {{ stored.identifier }} as
    select
        {% if by_rowid %}DBT_INTERNAL_DEST.{{ row_id }} as _stored_rowid,{% endif %}
        {% for key in keys -%}
        DBT_INTERNAL_DEST.{{ key }}{{ ',' if guard or not loop.last }}
        {% endfor -%}
        {%- if guard %}
        DBT_INTERNAL_DEST.updated_at,
        DBT_INTERNAL_DEST._publish_seq
        {%- endif %}
    from {{ target }} as DBT_INTERNAL_DEST
    where {{ adapter.dispatch('stored_rows_of', 'benefits_pipeline')(keys, source, target) }}
    {{- narrowing }};
    {%- endif %}

    {% if guard -%}
    delete from {{ source }} as incoming
    using {{ stored.identifier }} as stored
    where {{ same_key(keys, 'incoming', 'stored') }}
        and not {{ is_not_older_than('incoming', 'stored') }};
    {%- endif %}

    delete from {{ target }} as DBT_INTERNAL_DEST
    {%- if by_rowid %}
    {%- set doomed -%}
        select stored._stored_rowid
        from {{ stored.identifier }} as stored
        where exists (
            select 1 from {{ source }} as incoming where {{ same_key(keys, 'incoming', 'stored') }}
        )
    {%- endset %}
    where {{ adapter.dispatch('row_id_among', 'benefits_pipeline')(
        'DBT_INTERNAL_DEST.' ~ row_id, doomed, source) }};
    {%- else %}
    using {{ source }} as DBT_INTERNAL_SOURCE
    where {{ same_key(keys, 'DBT_INTERNAL_SOURCE', 'DBT_INTERNAL_DEST') }}
    {{- narrowing }};
    {%- endif %}

    {% if keep_stored -%}
    drop table {{ stored.identifier }};
    {%- endif %}

    {#- last, so the run's rows_affected is the rows inserted -#}
    insert into {{ target }} ({{ dest_cols_csv }})
    select {{ dest_cols_csv }}
    from {{ source }}
{% endmacro %}


{#-
    Lowest and highest non-null `key` among the incoming rows as {low, high, data_type}
    (SQL-quoted text), or none. Rendered as literals, the range reaches the target scan:
    DuckDB's zone maps skip row groups outside it and the rest of the rows are dropped
    before the hash probe; PostgreSQL reads the range through the key's b-tree. A join's
    own filter on so many keys is a probabilistic one that checks every row. Claim ids
    start with their received date, and a day's keys reach back about ten days, so the
    range skips most of the stored claims (README, Results).
-#}
{% macro incoming_key_range(incoming, key) %}
    {%- set query -%}
        select cast(min({{ key }}) as varchar), cast(max({{ key }}) as varchar),
            {{ adapter.dispatch('type_name_of', 'benefits_pipeline')(key) }}
        from {{ incoming }}
        where {{ key }} is not null
    {%- endset -%}
    {%- set row = run_query(query).rows[0] -%}
    {%- if row[0] is none -%}
        {{ return(none) }}
    {%- endif -%}
    {{ return({'low': row[0] | replace("'", "''"), 'high': row[1] | replace("'", "''"),
               'data_type': row[2]}) }}
{% endmacro %}


{#-
    `row_id` is one of the row ids `query` returns (at most one per row of `incoming`;
    none: ids of the model's own rows, at most one per row it holds).
    DuckDB and others (default__; every dispatched macro needs one, as dbt resolves
    dispatch calls when it parses the project): `in`, a semi join. PostgreSQL:
    `= any(array(...))`, which its planner turns into a TID scan that fetches just those
    rows; `ctid in (...)` is a hash semi join over a scan of the whole target. One array
    value holds at most 1 GB (about 170M row ids), so a run with more incoming rows than
    max_tid_array (a backfill) takes the semi join.
-#}
{% macro row_id_among(row_id, query, incoming=none) -%}
    {{ return(adapter.dispatch('row_id_among', 'benefits_pipeline')(row_id, query, incoming)) }}
{%- endmacro %}

{% macro default__row_id_among(row_id, query, incoming) -%}
    {{ row_id }} in (
        {{ query }}
    )
{%- endmacro %}

{% macro postgres__row_id_among(row_id, query, incoming) -%}
    {%- set max_tid_array = 100000000 -%}
    {%- if incoming is none -%}
        {#- ids of the model's own rows: at most as many as it holds (the planner's count) -#}
        {%- set rows = postgres_planner_rows(this) -%}
    {%- else -%}
        {%- set rows = run_query('select count(*) from ' ~ incoming).rows[0][0] -%}
    {%- endif -%}
    {%- if rows > max_tid_array -%}
        {{ default__row_id_among(row_id, query, incoming) }}
    {%- else %}
    {{ row_id }} = any(array(
        {{ query }}
    ))
    {%- endif %}
{%- endmacro %}


{#-
    The target rows (alias DBT_INTERNAL_DEST) whose key is incoming. DuckDB and others
    (default__): a semi join. PostgreSQL, with one key column and at least
    rows_per_key stored rows per incoming row (the planner's count of the target; the
    var lookup_rows_per_key): each incoming key looked up in the b-tree on the key
    (lookup_indexes), `= any(array(...))`,
    so the read follows the day's keys; a semi join is a hash join over a scan of the
    whole target (all history; the key range does not narrow it once late updates reach
    back across most of it), and faster only below that ratio (the same crossover as
    the monitor's PostgresBackend.key_lookup: README, "Figures behind the code's design
    notes"). One array value holds at most 1 GB, hence max_keys.
-#}
{% macro default__stored_rows_of(keys, source, target) -%}
    exists (
        select 1 from {{ source }} as DBT_INTERNAL_SOURCE
        where {{ same_key(keys, 'DBT_INTERNAL_SOURCE', 'DBT_INTERNAL_DEST') }}
    )
{%- endmacro %}

{% macro postgres__stored_rows_of(keys, source, target) -%}
    {%- set rows_per_key, max_keys = var('lookup_rows_per_key', 8) | int, 10000000 -%}
    {%- if keys | length == 1 -%}
        {%- set incoming = run_query('select count(*) from ' ~ source).rows[0][0] -%}
        {%- set stored = postgres_planner_rows(target) -%}
    {%- endif -%}
    {%- if keys | length == 1 and incoming <= max_keys and incoming * rows_per_key <= stored %}
    DBT_INTERNAL_DEST.{{ keys[0] }} = any(array(
        select DBT_INTERNAL_SOURCE.{{ keys[0] }} from {{ source }} as DBT_INTERNAL_SOURCE
    ))
    {%- else -%}
        {{ default__stored_rows_of(keys, source, target) }}
    {%- endif -%}
{%- endmacro %}


{#- PostgreSQL: the planner's row count of `relation` (reltuples; 0 if never analyzed). -#}
{% macro postgres_planner_rows(relation) -%}
    {{ return(run_query(
        "select coalesce(max(greatest(reltuples, 0)), 0)::bigint from pg_class "
        ~ "where oid = to_regclass('" ~ adapter.quote(relation.schema) ~ "."
        ~ adapter.quote(relation.identifier) ~ "')").rows[0][0]) }}
{%- endmacro %}


{#- An aggregate naming the SQL type of `column` (a cast target for its text). -#}
{% macro default__type_name_of(column) -%}
    {{ exceptions.raise_compiler_error(
        "type_name_of: no aggregate names a column's type on " ~ target.type) }}
{%- endmacro %}

{% macro duckdb__type_name_of(column) -%}
    any_value(typeof({{ column }}))
{%- endmacro %}

{% macro postgres__type_name_of(column) -%}
    min(pg_typeof({{ column }})::text)
{%- endmacro %}


{#- `left`.k = `right`.k for every key column k, as one parenthesized condition. -#}
{% macro same_key(keys, left, right) -%}
    ({% for key in keys -%}
        {{ left }}.{{ key }} = {{ right }}.{{ key }}{{ ' and ' if not loop.last }}
    {%- endfor %})
{%- endmacro %}


{#- `incremental_predicates` as a list (dbt-duckdb's normalize_incremental_predicates, which
    other adapters lack): none -> [], a string -> [it]. -#}
{% macro predicate_list(predicates) -%}
    {%- if predicates is none -%}
        {{ return([]) }}
    {%- elif predicates is string -%}
        {{ return([predicates]) }}
    {%- endif -%}
    {{ return(predicates | list) }}
{%- endmacro %}
