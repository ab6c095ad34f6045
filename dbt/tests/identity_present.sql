-- The envelope requires user_id or anonymous_id.
select event_id
from {{ source('headwater', 'events') }}
where coalesce(user_id, '') = '' and coalesce(anonymous_id, '') = ''
