-- Without a user_id the flow answers 'anonymous'; anything else did not come from the flow's look-up.
select event_id, plan_tier
from {{ source('headwater', 'events') }}
where user_id is null and plan_tier <> 'anonymous'
