-- Counts per event_date: every date holds each event_id once, and, when the var expected_counts is given
-- ({"2026-12-03": 120}, e.g. another store's distinct counts from `headwater quality --format json`), exactly that
-- many distinct events. A row returned is a date that fails.
{% set expected = var('expected_counts', {}) %}
with per_date as (
    select cast(event_date as {{ dbt.type_string() }}) as event_date,
           count(*) as stored_rows,
           count(distinct event_id) as distinct_events
    from {{ source('headwater', 'events') }}
    group by 1
),
expected as (
{%- if expected %}
  {%- for day, count in expected.items() %}
    select '{{ day }}' as event_date, {{ count | int }} as expected_events
    {%- if not loop.last %} union all{% endif %}
  {%- endfor %}
{%- else %}
    select cast(null as {{ dbt.type_string() }}) as event_date, cast(null as {{ dbt.type_int() }}) as expected_events
    where 1 = 0
{%- endif %}
)
select coalesce(p.event_date, e.event_date) as event_date, p.stored_rows, p.distinct_events, e.expected_events
from per_date p
full outer join expected e on p.event_date = e.event_date
where p.stored_rows <> p.distinct_events
   or (e.expected_events is not null and coalesce(p.distinct_events, 0) <> e.expected_events)
