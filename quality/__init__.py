"""Data-quality checks over what the flow wrote: the lake, ClickHouse and Snowflake agree with each other, with the
raw topic, with the OLTP accounts table, and hold every mandatory field (``headwater quality``)."""
