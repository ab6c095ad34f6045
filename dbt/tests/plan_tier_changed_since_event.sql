{{ config(severity='warn') }}
-- Rows whose user changed tier after the event (or whose account has no updated_at): expected while tiers change,
-- reported so that a sudden jump is visible.
select e.event_id, e.user_id, e.plan_tier, a.plan_tier as account_tier, a.updated_at
from {{ source('headwater', 'events') }} e
join {{ source('oltp', 'accounts') }} a on a.user_id = e.user_id
where e.plan_tier <> a.plan_tier
  and (a.updated_at is null
       or e.received_at <= {{ dbt.dateadd('second', var('plan_tier_ttl_seconds'),
                                          'cast(a.updated_at as ' ~ timestamp_tz_type() ~ ')') }})
