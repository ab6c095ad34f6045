"""Snowflake sink against the fakesnow server through the real connector (PUT, COPY INTO, MERGE, VARIANT)."""
from __future__ import annotations

import json
import socket
import threading
import time
import uuid

import pytest

from sinks.base import RetryPolicy
from sinks.snowflake import SnowflakeWriter
from tests.sinkrows import make_rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _url(port: int, schema: str) -> str:
    return f"snowflake://headwater@fakesnow/ANALYTICS/{schema}?host=127.0.0.1&port={port}&protocol=http"


def _drop(w: SnowflakeWriter) -> None:
    for table in ("EVENTS", "EVENTS_STAGING"):
        w.query(f"DROP TABLE IF EXISTS {w.target.qualified(table)}")
    w.query(f"DROP SCHEMA IF EXISTS {w.target.database}.{w.target.schema}")


@pytest.fixture
def writer(devstack):
    # A schema of its own per test keeps the shared ANALYTICS.PUBLIC.EVENTS untouched.
    w = SnowflakeWriter(_url(devstack.ports["snowflake"], f"HWTEST_{uuid.uuid4().hex[:8].upper()}"),
                        password="fakesnow", retry=RetryPolicy(attempts=2, base_delay=0.05))
    yield w
    _drop(w)
    w.close()


def test_replay_and_overlap_exactly_once(writer):
    first = make_rows(0, 2000)
    writer.write(first)
    writer.write(first)
    writer.write(make_rows(1500, 3000) + make_rows(2900, 3000))  # overlap, and duplicates within the batch
    assert writer.count() == writer.distinct_event_ids() == 3000
    assert writer.query(f"SELECT COUNT(*) FROM {writer.target.qualified('EVENTS_STAGING')}") == [(0,)]


def test_columns_and_variant_round_trip(writer):
    rows = make_rows(0, 30)
    writer.write(rows)
    got = {r[0]: r for r in writer.query(
        f"SELECT EVENT_ID, EVENT, EVENT_DATE, TIMESTAMP, USER_ID, CITY, LATITUDE, KAFKA_OFFSET, SCHEMA_VERSION, "
        f"PROPERTIES:plan_id::string, PROPERTIES:name::string, CONSENT, CONTEXT FROM {writer.table}")}
    for row in rows:
        (_, event, day, ts, user, city, lat, offset, version, plan, name, consent, context) = got[row["event_id"]]
        assert (event, day, ts, user, city, lat, offset, version) == (
            row["event"], row["event_date"], row["timestamp"], row["user_id"], row["city"], row["latitude"],
            row["kafka_offset"], row["schema_version"])
        assert plan == json.loads(row["properties"])["plan_id"] and name == "Grüße ✓"
        assert (consent is None) == (row["consent"] is None)
        assert json.loads(context) == json.loads(row["context"])
    by_plan = writer.query(f"SELECT PROPERTIES:plan_id::string AS p, COUNT(*) FROM {writer.table} GROUP BY p "
                           f"ORDER BY p")
    assert by_plan == [(f"plan-{i}", 6) for i in range(5)]


def test_twenty_thousand_rows_fast(writer):
    rows = make_rows(0, 20_000)
    writer.write(make_rows(0, 10))  # connect and create tables outside the measurement
    started = time.perf_counter()
    writer.write(rows)
    elapsed = time.perf_counter() - started
    print(f"snowflake sink: 20000 rows in {elapsed:.2f}s = {20_000 / elapsed:,.0f} rows/s")
    assert writer.count() == 20_000
    assert elapsed < 20, "far slower than PUT+COPY should be: is something inserting row by row?"


def test_server_outage_is_retried_without_loss_or_duplicates(tmp_path, devstack):
    from headwater.devstack import Devstack

    stack = Devstack(root=tmp_path / "stack", ports={"snowflake": _free_port()})
    stack.up(["snowflake"])
    restarter = None
    try:
        w = SnowflakeWriter(_url(stack.ports["snowflake"], "PUBLIC"), password="fakesnow",
                            retry=RetryPolicy(attempts=40, base_delay=0.2, max_delay=1.0), login_timeout=5,
                            network_timeout=10)
        w.write(make_rows(0, 3000))
        stack.down(["snowflake"])
        restarter = threading.Timer(1.5, lambda: stack.up(["snowflake"]))
        restarter.start()
        started = time.monotonic()
        w.write(make_rows(2000, 6000))
        assert time.monotonic() - started > 1.0
        restarter.join()
        w.write(make_rows(0, 3000))
        assert w.count() == w.distinct_event_ids() == 6000
        w.close()
    finally:
        if restarter is not None:
            restarter.join()
        stack.down(["snowflake"])
