"""Snowflake sink against the fakesnow server through the real connector (PUT, COPY INTO, MERGE, VARIANT)."""
from __future__ import annotations

import json
import os
import signal
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


def test_twenty_thousand_rows_in_one_batch(writer):
    # Speed is bench/bench_sinks.py's business; this checks a large batch goes through the stage in one piece.
    writer.write(make_rows(0, 10))
    writer.write(make_rows(0, 20_000))
    assert writer.count() == writer.distinct_event_ids() == 20_000


def test_server_outage_is_retried_without_loss_or_duplicates(tmp_path, devstack):
    """fakesnow keeps its data in memory in server mode (a restart empties it), so the outage is a frozen server:
    SIGSTOP, like a hung endpoint, then SIGCONT. The write made meanwhile is retried until the server answers."""
    from headwater.devstack import Devstack

    stack = Devstack(root=tmp_path / "stack", ports={"snowflake": _free_port()})
    stack.up(["snowflake"])
    pid = stack.pid_of("snowflake")
    thaw = None
    try:
        w = SnowflakeWriter(_url(stack.ports["snowflake"], "PUBLIC"), password="fakesnow",
                            retry=RetryPolicy(attempts=40, base_delay=0.2, max_delay=1.0), login_timeout=5,
                            network_timeout=3)
        w.write(make_rows(0, 3000))
        os.kill(pid, signal.SIGSTOP)
        thaw = threading.Timer(4.0, lambda: os.kill(pid, signal.SIGCONT))
        thaw.start()
        started = time.monotonic()
        w.write(make_rows(2000, 6000))  # overlaps the first batch by 1000 event ids
        waited = time.monotonic() - started
        thaw.join()
        assert waited > 3.0, "the write returned while the server was frozen"
        assert w.count() == w.distinct_event_ids() == 6000
        w.close()
    finally:
        if thaw is not None:
            thaw.cancel()
            os.kill(pid, signal.SIGCONT)
        stack.down(["snowflake"])
