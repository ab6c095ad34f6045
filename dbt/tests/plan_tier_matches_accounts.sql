-- A known user's row carries the tier the account had when the event arrived. The snapshot is current, so only
-- accounts unchanged since before the event (plus the flow's cache TTL) can prove a row wrong; younger changes
-- are reported by plan_tier_changed_since_event (a warning).
select e.event_id, e.user_id, e.plan_tier, a.plan_tier as account_tier, a.updated_at
from {{ source('headwater', 'events') }} e
join {{ source('oltp', 'accounts') }} a on a.user_id = e.user_id
where e.plan_tier <> a.plan_tier
  and a.updated_at is not null
  and e.received_at > {{ dbt.dateadd('second', var('plan_tier_ttl_seconds'),
                                     'cast(a.updated_at as ' ~ timestamp_tz_type() ~ ')') }}
