{#- Text columns that must not be empty strings: a NULL stored as '' passes not_null, not this. -#}
{% macro mandatory_text_columns() %}
  {{ return(['event_id', 'event', 'pii_salt_id', 'plan_tier', 'source', 'kafka_topic']) }}
{% endmacro %}

{#- The timestamp-with-time-zone type of the target: received_at is one, and a naive cast would shift it. -#}
{% macro timestamp_tz_type() %}
  {{ return('timestamp_tz' if target.type == 'snowflake' else 'timestamptz') }}
{% endmacro %}
