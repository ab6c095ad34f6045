"""The flow with its warehouse-side sinks, as operators run it: events with known ids → the raw topic → a
``python -m bytewax.run`` subprocess writing the lake (on moto S3), ClickHouse (the Debian server), Snowflake
(fakesnow) and JSON lines, SIGKILLed mid-stream and restarted from its recovery store. The lake, ClickHouse
(counted with FINAL) and Snowflake must then each hold every event exactly once, enriched and PII-free."""
from __future__ import annotations

import hashlib
import hmac
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from flows.outputs import read_json_lines
from geoip.build import build_city_database
from schemas.wire import RawRecord
from sinks.s3_parquet import ParquetLakeWriter
from tests.flowkit import GEO_CSV, PLANTED, identify_event, page_event
from tests.integration.test_flow_recovery import (REPO, _env, _now_iso, _produce, _produce_slowly, accounts_table,
                                                  topics)

pytestmark = pytest.mark.integration
N_EVENTS = 6000
FLOW_SALT = b"q-integration-salt-0123456789"  # the salt test_flow_recovery._env configures

__all__ = ["accounts_table", "topics"]  # fixtures, shared with the recovery test


@pytest.fixture()
def warehouses(devstack):
    """A ClickHouse database and a Snowflake schema of this test's own, as settings for the flow, plus writers
    (used only to count and to drop)."""
    from sinks.clickhouse import ClickHouseWriter
    from sinks.snowflake import SnowflakeWriter

    suffix = uuid.uuid4().hex[:8]
    env = {"HEADWATER_CLICKHOUSE_URL": f"clickhouse://127.0.0.1:{devstack.ports['clickhouse']}/hw_flow_{suffix}",
           "HEADWATER_SNOWFLAKE_URL": f"snowflake://headwater@fakesnow/ANALYTICS/HWFLOW_{suffix.upper()}"
                                      f"?host=127.0.0.1&port={devstack.ports['snowflake']}&protocol=http",
           "HEADWATER_SNOWFLAKE_PASSWORD": "fakesnow"}
    clickhouse = ClickHouseWriter(env["HEADWATER_CLICKHOUSE_URL"])
    snowflake = SnowflakeWriter(env["HEADWATER_SNOWFLAKE_URL"], password="fakesnow")
    yield env, clickhouse, snowflake
    try:
        clickhouse.query(f"DROP DATABASE IF EXISTS hw_flow_{suffix}")
        for table in ("EVENTS", "EVENTS_STAGING"):
            snowflake.query(f"DROP TABLE IF EXISTS {snowflake.target.qualified(table)}")
        snowflake.query(f"DROP SCHEMA IF EXISTS {snowflake.target.database}.{snowflake.target.schema}")
    finally:
        clickhouse.close()
        snowflake.close()


def _start(env, tmp_path: Path, topics, table: str, lake_url: str, run: int) -> subprocess.Popen:
    call = (f"flows.run:get_flow(output='lake:{lake_url},clickhouse,snowflake,jsonl:{tmp_path / 'rows'}', "
            f"raw_topic='{topics['raw']}', "
            f"invalid_topic='{topics['invalid']}', plan_tier_table='{table}', batch_size=500)")
    log = open(tmp_path / f"flow-{run}.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "bytewax.run", call, "-r", str(tmp_path / "recovery"),
                             "-s", "1", "-b", "0"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def _lake_ids(lake: ParquetLakeWriter) -> Counter:
    try:
        return Counter(lake.read_table(columns=["event_id"]).column("event_id").to_pylist())
    except FileNotFoundError:
        return Counter()


def _counted(count) -> int:
    try:
        return count()
    except Exception:  # the table does not exist until the flow's first write
        return 0


def _log(tmp_path: Path, run: int) -> str:
    return (tmp_path / f"flow-{run}.log").read_text(errors="replace")[-3000:]


def test_every_event_reaches_every_sink_exactly_once_across_sigkill(devstack, stack_settings, topics,
                                                                     accounts_table, warehouses, tmp_path):
    warehouse_env, clickhouse, snowflake = warehouses
    geo_db = build_city_database(GEO_CSV, tmp_path / "city.mmdb")
    events = []
    for i in range(N_EVENTS):
        event = identify_event(f"user-{i % 300}") if i % 5 == 0 else page_event(f"user-{i % 300}")
        event["timestamp"] = _now_iso(-2)
        events.append(event)
    encoded = [(r.key, r.encode()) for r in (RawRecord(e, received_at=_now_iso(), gateway_id="gw-it",
                                                       sent_at=_now_iso(-1), client_ip=PLANTED["client_ip"])
                                             for e in events)]
    expected = {e["event_id"] for e in events}
    half = N_EVENTS // 2
    lake_url = f"{stack_settings.s3_url.rstrip('/')}/it-flow-{uuid.uuid4().hex[:10]}"
    lake = ParquetLakeWriter.from_settings(stack_settings.model_copy(update={"s3_url": lake_url}))

    (tmp_path / "recovery").mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(tmp_path / "recovery"), "1"], check=True)
    env = {**_env(devstack, tmp_path, geo_db), **warehouse_env}

    _produce(stack_settings, topics["raw"], encoded[:half])
    first = _start(env, tmp_path, topics, accounts_table, lake_url, 1)
    try:
        deadline = time.monotonic() + 60
        while len(_lake_ids(lake)) < half and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.3)
        assert len(_lake_ids(lake)) >= half, _log(tmp_path, 1)
        # The second half arrives over about three seconds; the flow is killed while it is still arriving.
        trickle = threading.Thread(target=_produce_slowly, args=(stack_settings, topics["raw"], encoded[half:]),
                                   kwargs={"per_tick": 50})
        trickle.start()
        while len(read_json_lines(tmp_path / "rows")) < half + 300 and time.monotonic() < deadline + 30:
            time.sleep(0.05)
        assert first.poll() is None, _log(tmp_path, 1)
        first.send_signal(signal.SIGKILL)
        killed_mid_stream = trickle.is_alive()
        first.wait(10)
        trickle.join(30)
    finally:
        if first.poll() is None:
            first.kill()
    in_lake_at_kill = sum(_lake_ids(lake).values())
    assert killed_mid_stream and half <= in_lake_at_kill < N_EVENTS, "the kill did not land mid-stream"

    second = _start(env, tmp_path, topics, accounts_table, lake_url, 2)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (expected <= set(_lake_ids(lake))
                                                   and _counted(clickhouse.count_final) >= N_EVENTS
                                                   and _counted(snowflake.count) >= N_EVENTS):
            assert second.poll() is None, _log(tmp_path, 2)
            time.sleep(0.5)
        time.sleep(2.5)  # a couple more epochs: a late duplicate would show up now
    finally:
        second.send_signal(signal.SIGINT)
        try:
            second.wait(15)
        except subprocess.TimeoutExpired:
            second.kill()

    table = lake.read_table()
    seen = Counter(table.column("event_id").to_pylist())
    assert set(seen) == expected, f"{len(expected - set(seen))} events missing from the lake"
    assert set(seen.values()) == {1}, f"{sum(seen.values()) - len(seen)} duplicate rows in the lake"
    assert clickhouse.count_final() == clickhouse.distinct_event_ids() == N_EVENTS
    assert snowflake.count() == snowflake.distinct_event_ids() == N_EVENTS
    jsonl = Counter(r["event_id"] for r in read_json_lines(tmp_path / "rows"))
    assert set(jsonl) == expected  # the other sink got everything too (at least once: JSON lines just append)

    rows = table.to_pylist()
    tiers = {r["user_id"]: r["plan_tier"] for r in rows}
    assert (tiers["user-0"], tiers["user-2"], tiers["user-4"], tiers["user-1"]) == ("free", "enterprise", "pro",
                                                                                  "unknown")
    assert {(r["event"], r["country"], r["city"] is not None, r["ip_truncated"]) for r in rows} == {
        ("identify", "GB", True, "81.2.69.0"), ("page_viewed", "DE", True, "2a02:ec0:1::")}
    identify = next(r for r in rows if r["event"] == "identify")
    hashed = hmac.new(FLOW_SALT, PLANTED["email"].lower().encode(), hashlib.sha256).hexdigest()
    assert json.loads(identify["properties"])["email"] == hashed
    text = json.dumps(rows, default=str).lower()
    for value in PLANTED.values():
        assert value.lower() not in text
    print(f"\n{in_lake_at_kill} lake rows when killed, {len(lake.filesystem.find(lake._base))} lake objects")
