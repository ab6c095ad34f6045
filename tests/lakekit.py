"""Rows shaped like the flow's output, for the lake tests (unit, integration and bench)."""
from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from sinks.base import ROW_COLUMNS

BASE_TIME = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.timezone.utc)


def lake_row(offset: int, partition: int = 0, topic: str = "raw", day: dt.date = dt.date(2026, 12, 3),
             properties: dict[str, Any] | None = None, received_at: dt.datetime | None = None,
             event_id: str | None = None) -> dict[str, Any]:
    received = received_at or BASE_TIME + dt.timedelta(milliseconds=offset)
    row = dict.fromkeys(ROW_COLUMNS)
    row.update({
        "event_id": event_id or str(uuid.uuid5(uuid.NAMESPACE_URL, f"{topic}/{partition}/{offset}")),
        "event": "page_viewed", "event_date": day,
        "timestamp": received - dt.timedelta(seconds=1), "received_at": received,
        "user_id": f"h:{offset % 97}", "pii_salt_id": "2026Q4", "country": "DE", "city": "Berlin",
        "latitude": 52.52, "longitude": 13.4, "time_zone": "Europe/Berlin", "ip_truncated": "2a02:ec0:1::",
        "plan_tier": "pro", "browser": "Firefox", "os": "Linux", "device_class": "desktop",
        "properties": json.dumps(properties if properties is not None else {"path": "/p", "n": offset}),
        "context": json.dumps({"locale": "de-DE"}), "consent": None, "source": "http", "schema_version": 1,
        "clock_skew_seconds": 0.25, "kafka_topic": topic, "kafka_partition": partition, "kafka_offset": offset,
    })
    return row


def rows(offsets, partition: int = 0, **kw: Any) -> list[dict[str, Any]]:
    return [lake_row(o, partition, **kw) for o in offsets]
