{#-
    The small SQL constructs that DuckDB, PostgreSQL and Spark spell differently, each
    behind adapter.dispatch: `duckdb__` renders what the models used before (so the DuckDB
    SQL and its plans are unchanged), `postgres__` its PostgreSQL 15 equivalent, `spark__`
    Spark SQL's (Spark 4 over Spark Connect; dbt-spark runs it with ANSI mode off, and
    its string literals are written raw, r'...', so a regex backslash stays one). The larger
    engine-specific macros (date parsing, the versions body, published_rows, the merge
    strategy) dispatch the same way in their own files. docs/contracts.md lists them.
-#}

{#- Days from `start` to `end` (two dates), as an integer. -#}
{% macro date_diff_days(start, end) -%}
    {{ return(adapter.dispatch('date_diff_days', 'benefits_pipeline')(start, end)) }}
{%- endmacro %}

{% macro duckdb__date_diff_days(start, end) -%}
    date_diff('day', {{ start }}, {{ end }})
{%- endmacro %}

{% macro postgres__date_diff_days(start, end) -%}
    ({{ end }} - {{ start }})
{%- endmacro %}

{% macro spark__date_diff_days(start, end) -%}
    datediff({{ end }}, {{ start }})
{%- endmacro %}


{#-
    `text` as decimal(precision, scale), NULL when it is no number or does not fit
    (DuckDB's try_cast). PostgreSQL's cast raises instead, so the text is matched against
    the number syntax first and the rounded value checked against the precision.
-#}
{% macro try_cast_decimal(text, precision, scale) -%}
    {{ return(adapter.dispatch('try_cast_decimal', 'benefits_pipeline')(text, precision, scale)) }}
{%- endmacro %}

{% macro duckdb__try_cast_decimal(text, precision, scale) -%}
    try_cast({{ text }} as decimal({{ precision }}, {{ scale }}))
{%- endmacro %}

{#- the outer cast keeps the type's precision and scale on the column (a CASE drops them) -#}
{% macro postgres__try_cast_decimal(text, precision, scale) -%}
    cast(case
        when trim({{ text }}) ~ '^[+-]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][+-]?[0-9]{1,3})?$'
            then case
                when abs(round(cast(trim({{ text }}) as numeric), {{ scale }}))
                    < power(cast(10 as numeric), {{ precision - scale }})
                    then cast(trim({{ text }}) as decimal({{ precision }}, {{ scale }}))
            end
    end as decimal({{ precision }}, {{ scale }}))
{%- endmacro %}

{#- Spark's try_cast returns NULL on bad text and on overflow, as DuckDB's -#}
{% macro spark__try_cast_decimal(text, precision, scale) -%}
    try_cast({{ text }} as decimal({{ precision }}, {{ scale }}))
{%- endmacro %}


{#- `text` as integer (rounded, as DuckDB's try_cast), NULL when no number or too large. -#}
{% macro try_cast_integer(text) -%}
    {{ return(adapter.dispatch('try_cast_integer', 'benefits_pipeline')(text)) }}
{%- endmacro %}

{% macro duckdb__try_cast_integer(text) -%}
    try_cast({{ text }} as integer)
{%- endmacro %}

{% macro postgres__try_cast_integer(text) -%}
    case
        when trim({{ text }}) ~ '^[+-]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][+-]?[0-9]{1,3})?$'
            then case
                when round(cast(trim({{ text }}) as numeric)) between -2147483648 and 2147483647
                    then cast(round(cast(trim({{ text }}) as numeric)) as integer)
            end
    end
{%- endmacro %}

{#- Spark's try_cast of '12.5' to int is NULL: read as a decimal and rounded, as DuckDB -#}
{% macro spark__try_cast_integer(text) -%}
    try_cast(round(try_cast({{ text }} as decimal(38, 10))) as int)
{%- endmacro %}


{#- True when all of `text` matches `pattern` (a literal without quotes), NULL on NULL. -#}
{% macro regex_full_match(text, pattern) -%}
    {{ return(adapter.dispatch('regex_full_match', 'benefits_pipeline')(text, pattern)) }}
{%- endmacro %}

{% macro duckdb__regex_full_match(text, pattern) -%}
    regexp_full_match({{ text }}, '{{ pattern }}')
{%- endmacro %}

{% macro postgres__regex_full_match(text, pattern) -%}
    ({{ text }} ~ '^(?:{{ pattern }})$')
{%- endmacro %}

{% macro spark__regex_full_match(text, pattern) -%}
    ({{ text }} rlike r'^(?:{{ pattern }})$')
{%- endmacro %}


{#-
    Capture group `group` of the first match of `pattern` (a literal without quotes) in
    `text`, case-insensitive; DuckDB gives '' and PostgreSQL NULL when nothing matches
    (callers wrap it in clean_null, which makes both NULL).
-#}
{% macro regex_extract_ci(text, pattern, group) -%}
    {{ return(adapter.dispatch('regex_extract_ci', 'benefits_pipeline')(text, pattern, group)) }}
{%- endmacro %}

{% macro duckdb__regex_extract_ci(text, pattern, group) -%}
    regexp_extract({{ text }}, '(?i){{ pattern }}', {{ group }})
{%- endmacro %}

{#- group 1: substring(... from ...) gives the same first capture group as regexp_substr
    and runs faster (README, "Running on PostgreSQL") -#}
{% macro postgres__regex_extract_ci(text, pattern, group) -%}
    {%- if group == 1 -%}
        substring({{ text }} from '(?i){{ pattern }}')
    {%- else -%}
        regexp_substr({{ text }}, '{{ pattern }}', 1, 1, 'i', {{ group }})
    {%- endif -%}
{%- endmacro %}

{#- '' when nothing matches, as DuckDB -#}
{% macro spark__regex_extract_ci(text, pattern, group) -%}
    regexp_extract({{ text }}, r'(?i){{ pattern }}', {{ group }})
{%- endmacro %}


{#-
    `alias.*` without the columns `except` (names). DuckDB: `* exclude`. PostgreSQL has
    no such star: the columns of `relation` (the relation `alias` reads) are listed.
-#}
{% macro star_except(alias, relation, except) -%}
    {{ return(adapter.dispatch('star_except', 'benefits_pipeline')(alias, relation, except)) }}
{%- endmacro %}

{% macro duckdb__star_except(alias, relation, except) -%}
    {{ alias }}.* exclude ({{ except | join(', ') }})
{%- endmacro %}

{% macro postgres__star_except(alias, relation, except) -%}
    {%- set names = [] -%}
    {%- for name in relation_column_names(relation) if name not in except -%}
        {%- do names.append(alias ~ '.' ~ adapter.quote(name)) -%}
    {%- endfor -%}
    {{ names | join(',\n        ') if names else alias ~ '.*' }}
{%- endmacro %}

{% macro spark__star_except(alias, relation, except) -%}
    {{ alias }}.* except ({{ except | join(', ') }})
{%- endmacro %}


{#-
    `select * from <first> union all by name select * from <second> ...`: the union of
    CTEs (names) matched by column name. PostgreSQL matches by position, so every side
    selects the columns of `relation` (which the CTEs all share, but for the names in
    `except`) in its order. One CTE is `select *` from it on both engines.
-#}
{% macro union_all_by_name(ctes, relation, except=[]) -%}
    {{ return(adapter.dispatch('union_all_by_name', 'benefits_pipeline')(ctes, relation, except)) }}
{%- endmacro %}

{% macro duckdb__union_all_by_name(ctes, relation, except=[]) -%}
    {%- for cte in ctes %}
    select * from {{ cte }}
    {%- if not loop.last %}
    union all by name
    {%- endif %}
    {%- endfor %}
{%- endmacro %}

{% macro postgres__union_all_by_name(ctes, relation, except=[]) -%}
    {%- set names = [] -%}
    {%- for name in (relation_column_names(relation) if ctes | length > 1 else [])
        if name not in except -%}
        {%- do names.append(adapter.quote(name)) -%}
    {%- endfor -%}
    {%- for cte in ctes %}
    select {{ names | join(', ') if names else '*' }} from {{ cte }}
    {%- if not loop.last %}
    union all
    {%- endif %}
    {%- endfor %}
{%- endmacro %}

{#- Spark SQL's UNION matches by position, as PostgreSQL's -#}
{% macro spark__union_all_by_name(ctes, relation, except=[]) -%}
    {{ postgres__union_all_by_name(ctes, relation, except) }}
{%- endmacro %}


{#-
    The physical row id of a table's row, valid within one statement (and, with the
    table locked against writers, within one transaction): DuckDB's rowid,
    PostgreSQL's ctid.
-#}
{% macro row_id(alias) -%}
    {{ return(adapter.dispatch('row_id', 'benefits_pipeline')(alias)) }}
{%- endmacro %}

{% macro duckdb__row_id(alias) -%}
    {{ alias }}.rowid
{%- endmacro %}

{% macro postgres__row_id(alias) -%}
    {{ alias }}.ctid
{%- endmacro %}

{#- Spark's files have no row id: the model's own unique_key (one column) names the row -#}
{% macro spark__row_id(alias) -%}
    {%- set key = config.get('unique_key') -%}
    {%- if key is not string -%}
        {{ exceptions.raise_compiler_error("row_id on Spark needs a one-column unique_key") }}
    {%- endif -%}
    {{ alias }}.{{ key }}
{%- endmacro %}


{#-
    Keep only the latest version per `partition_by` (a column list as SQL text), as the
    last clause of a select (macros/versioning.sql, latest_version). DuckDB: QUALIFY.
    PostgreSQL has no QUALIFY; ordering by the same row_number() and fetching the first
    row WITH TIES keeps every row numbered 1 (one per partition), filtered after the
    select's own window functions exactly as QUALIFY is. It sorts the rows once more.
-#}
{% macro keep_first_row(partition_by, order_by) -%}
    {{ return(adapter.dispatch('keep_first_row', 'benefits_pipeline')(partition_by, order_by)) }}
{%- endmacro %}

{% macro duckdb__keep_first_row(partition_by, order_by) -%}
    qualify row_number() over (partition by {{ partition_by }} order by {{ order_by }}) = 1
{%- endmacro %}

{% macro postgres__keep_first_row(partition_by, order_by) -%}
    order by row_number() over (partition by {{ partition_by }} order by {{ order_by }})
    fetch first 1 rows with ties
{%- endmacro %}

{#- Spark has no QUALIFY: the models call latest_version_select (first_row_select), whose
    DuckDB and PostgreSQL forms call this; dbt's parser may render it on Spark too. -#}
{% macro spark__keep_first_row(partition_by, order_by) -%}
    {%- if execute -%}
        {{ exceptions.raise_compiler_error("keep_first_row: Spark has no QUALIFY, use latest_version_select") }}
    {%- endif -%}
{%- endmacro %}


{#-
    The select `select` (one select, nothing after its from/where) keeping only the
    first row per `partition_by` in `order_by`, counted over the rows of its FROM after
    its WHERE, as keep_first_row (macros/versioning.sql, latest_version_select). DuckDB
    and PostgreSQL append keep_first_row to the select, so their SQL is what it was.
    Spark has neither QUALIFY nor FETCH ... WITH TIES: the row number becomes the
    select's first column (its window sees the same rows, and the select's own window
    functions are computed before the filter, as with QUALIFY) and an outer select
    keeps the rows numbered 1, without that column.
-#}
{% macro first_row_select(select, partition_by, order_by) -%}
    {{ return(adapter.dispatch('first_row_select', 'benefits_pipeline')(select, partition_by, order_by)) }}
{%- endmacro %}

{% macro default__first_row_select(select, partition_by, order_by) -%}
    {{ select }}
    {{ keep_first_row(partition_by, order_by) }}
{%- endmacro %}

{% macro spark__first_row_select(select, partition_by, order_by) -%}
    {%- set body = select | trim -%}
    {%- if not body.lower().startswith('select') -%}
        {{ exceptions.raise_compiler_error("first_row_select: not one select: " ~ body[:40]) }}
    {%- endif -%}
    select * except (_first_row_rank)
    from (
        select
            row_number() over (
                partition by {{ partition_by }} order by {{ order_by }}
            ) as _first_row_rank,
            {{ body[6:] | trim }}
    ) as ranked
    where _first_row_rank = 1
{%- endmacro %}


{#- `cte as not materialized (...)`: DuckDB and PostgreSQL inline the CTE; Spark's
    parser has no such hint. -#}
{% macro not_materialized() -%}
    {{ return(adapter.dispatch('not_materialized', 'benefits_pipeline')()) }}
{%- endmacro %}

{% macro default__not_materialized() -%}
    not materialized
{%- endmacro %}

{% macro spark__not_materialized() -%}
{%- endmacro %}


{#- `cte as materialized (...)`: DuckDB and PostgreSQL compute the CTE once, before the
    statement's other work; Spark's parser has no such hint. -#}
{% macro materialized() -%}
    {{ return(adapter.dispatch('materialized', 'benefits_pipeline')()) }}
{%- endmacro %}

{% macro default__materialized() -%}
    materialized
{%- endmacro %}

{% macro spark__materialized() -%}
{%- endmacro %}


{#- The type name of text in a cast (Spark's varchar needs a length). -#}
{% macro text_type() -%}
    {{ return(adapter.dispatch('text_type', 'benefits_pipeline')()) }}
{%- endmacro %}

{% macro default__text_type() -%}
    varchar
{%- endmacro %}

{% macro spark__text_type() -%}
    string
{%- endmacro %}


{#- `value` as a Spark SQL string literal (backslash and quote escaped). -#}
{% macro spark_string(value) -%}
    '{{ value | string | replace("\\", "\\\\") | replace("'", "\\'") }}'
{%- endmacro %}


{#- Names of the columns of `relation`, in order ([] at parse time). -#}
{% macro relation_column_names(relation) -%}
    {%- if not execute -%}
        {{ return([]) }}
    {%- endif -%}
    {{ return(adapter.get_columns_in_relation(relation) | map(attribute='name') | list) }}
{%- endmacro %}
