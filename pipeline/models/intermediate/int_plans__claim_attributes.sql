-- One row per plan: the attributes a claim takes from its plan (the latest version's
-- plan_type and carrier) and `_attributes_publish_seq`, the batch from which they hold.
--
-- Why not the latest version's own batch: a plan gets a new version for any change (a
-- premium renewal, an end date), and the facts restate every stored claim of a plan
-- whose claim attributes changed after their watermark. Finding those claims reads the
-- fact's plan_id column, all of it, and that grows with the table (README, Results).
-- With this batch, a new version that leaves plan_type and carrier as they were
-- restates nothing and the lookup is skipped.
--
-- Exact for a series of incremental runs as for a full refresh: the batch is the newest
-- among the versions whose attributes differ from the version before them (in
-- version_order; the oldest version counts as a change). A new version, even one that
-- arrives late and sorts between older ones, can only change that set by being in it
-- itself, and then it is the newest batch of all, above every fact's watermark.

with

plans as (

    select * from {{ ref('int_plans__enriched') }}

),

versions as (

    select
        plan_id,
        plan_type,
        carrier,
        updated_at,
        _publish_seq,
        _line_number,
        {{ changes_from_previous_version(['plan_type', 'carrier'], 'latest_first') }}
            as changes_attributes
    from plans
    window latest_first as (partition by plan_id order by {{ version_order() }})

),

latest_attributes as (

    {% call latest_version_select('plan_id') -%}
    select
        plan_id,
        plan_type,
        carrier,
        max(case when changes_attributes then _publish_seq end)
            over (partition by plan_id) as _attributes_publish_seq
    from versions
    {%- endcall %}

)

select * from latest_attributes
