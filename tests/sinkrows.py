"""Rows as the flow hands them to the sinks (see ``sinks.base``), for the sink tests and the sink benchmark."""
from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from sinks.base import ROW_COLUMNS

BASE_TIME = dt.datetime(2026, 12, 3, 11, 59, 58, 123456, tzinfo=dt.timezone.utc)
_NAMESPACE = uuid.UUID("6f1c9c1e-3d0b-4d5e-9a55-1f0e6b1c2a10")


def event_id(n: int, salt: str = "") -> str:
    """A stable UUID per (n, salt): the same n gives the same event, so replays and overlaps are easy to build."""
    return str(uuid.uuid5(_NAMESPACE, f"{salt}{n}"))


def make_row(n: int, salt: str = "", **override: Any) -> dict[str, Any]:
    ts = BASE_TIME + dt.timedelta(seconds=n % 86_400, microseconds=n % 1000)
    row = {
        "event_id": event_id(n, salt), "event": ("page", "track", "identify")[n % 3],
        "event_date": ts.date(), "timestamp": ts, "received_at": ts + dt.timedelta(milliseconds=250),
        "user_id": f"u{n % 977:04d}" if n % 5 else None, "anonymous_id": f"anon-{n % 313}",
        "device_id": f"dev-{n % 101}" if n % 7 else None,
        "pii_salt_id": "2026Q4", "pii_salt_id_prev": "2026Q3" if n % 11 == 0 else None,
        "country": ("DE", "SE", "GB", None)[n % 4], "region": "Bavaria" if n % 4 == 0 else None,
        "city": "Zürich" if n % 9 == 0 else None,
        "latitude": 47.37 + (n % 10) / 100 if n % 4 != 3 else None,
        "longitude": 8.54 if n % 4 != 3 else None, "time_zone": "Europe/Zurich" if n % 4 != 3 else None,
        "ip_truncated": "81.2.69.0" if n % 2 else None, "plan_tier": ("free", "pro", "unknown")[n % 3],
        "browser": "Safari" if n % 2 else None, "os": "iOS", "device_class": "mobile",
        "properties": json.dumps({"plan_id": f"plan-{n % 5}", "n": n, "name": "Grüße ✓"}, ensure_ascii=False),
        "context": json.dumps({"locale": "de-CH", "app": {"version": "4.12.0"}}),
        "consent": json.dumps({"analytics": True}) if n % 3 else None,
        "source": "native", "schema_version": 1 + n % 3, "clock_skew_seconds": (n % 7) * 0.5,
        "kafka_topic": "analytics.events.raw", "kafka_partition": n % 4, "kafka_offset": n,
    }
    row.update(override)
    assert tuple(row) == ROW_COLUMNS
    return row


def make_rows(start: int, stop: int, salt: str = "") -> list[dict[str, Any]]:
    return [make_row(n, salt) for n in range(start, stop)]
