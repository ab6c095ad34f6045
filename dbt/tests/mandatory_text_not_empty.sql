-- Mandatory text fields hold something: an empty string is how a non-nullable column stores a missing value.
select event_id, event, pii_salt_id, plan_tier, source, kafka_topic
from {{ source('headwater', 'events') }}
where {% for column in mandatory_text_columns() -%}
  {{ column }} = ''{% if not loop.last %} or {% endif %}
{%- endfor %}
