"""One sink's service goes down while the whole flow runs: the flow (a ``python -m bytewax.run`` process with
recovery) writes the lake (moto S3), ClickHouse (the Debian server) and Snowflake (fakesnow), each on a private
server of this module's own. Mid-stream one of them goes away: the ClickHouse server is stopped and started again
(its data is on disk); moto and fakesnow are frozen with SIGSTOP and thawed with SIGCONT, because both keep their
data in memory (fakesnow's ``-d`` applies to its library mode, not to ``fakesnow -s``: a restarted server is
empty). While it is down the other two sinks must keep taking the events that arrive; once it is back, every event
must be in each sink exactly once (ClickHouse counted with FINAL).

The shared devstack's Kafka and PostgreSQL are used (topics and a plan-tier table of the test's own); its moto,
fakesnow and ClickHouse are never touched.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Callable

import pytest

from geoip.build import build_city_database
from schemas.wire import RawRecord
from sinks.base import RetryPolicy
from sinks.clickhouse import ClickHouseWriter
from sinks.s3_parquet import ParquetLakeWriter
from sinks.snowflake import SnowflakeWriter
from tests.flowkit import GEO_CSV, PLANTED, identify_event, page_event
from tests.integration.test_flow_recovery import (REPO, _env, _now_iso, _produce, _produce_slowly, accounts_table,
                                                  topics)

pytestmark = pytest.mark.integration

__all__ = ["accounts_table", "topics"]  # fixtures, shared with the recovery test

PHASE = 2000  # events before, during and after the outage
OUTAGE_SECONDS = 20.0  # the longest the service stays down; the events of the outage arrive over its first 5 s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def private_stack(tmp_path_factory, devstack):
    """moto, fakesnow and ClickHouse of this module's own, on free ports (the shared ones are never stopped)."""
    from headwater.devstack import Devstack

    stack = Devstack(root=tmp_path_factory.mktemp("outage-stack"),
                     ports={"s3": _free_port(), "snowflake": _free_port(), "clickhouse": _free_port(),
                            "clickhouse_http": _free_port()})
    started = stack.up(["s3", "snowflake", "clickhouse"])
    try:
        yield stack
    finally:
        for frozen in ("s3", "snowflake"):
            pid = stack.pid_of(frozen)
            if pid:
                os.kill(pid, signal.SIGCONT)  # a frozen server would not stop
        stack.down(started)


class Sinks:
    """Readers of the three destinations one test case writes to, and the settings that point the flow at them."""

    def __init__(self, stack, settings, suffix: str):
        from headwater.settings import load_settings

        stack_env = stack.env()
        self.env = {
            **{k: v for k, v in stack_env.items() if k.startswith("HEADWATER_S3_")},
            "HEADWATER_S3_URL": f"{stack_env['HEADWATER_S3_URL']}/outage-{suffix}",
            "HEADWATER_CLICKHOUSE_URL": f"clickhouse://127.0.0.1:{stack.ports['clickhouse']}/hw_outage_{suffix}",
            "HEADWATER_SNOWFLAKE_URL": f"snowflake://headwater@fakesnow/ANALYTICS/HWOUTAGE_{suffix.upper()}"
                                       f"?host=127.0.0.1&port={stack.ports['snowflake']}&protocol=http",
            "HEADWATER_SNOWFLAKE_PASSWORD": "fakesnow",
        }
        once = RetryPolicy(attempts=1)
        self.lake = ParquetLakeWriter.from_settings(load_settings(self.env), timeout_seconds=2.0, retry=once)
        self.clickhouse = ClickHouseWriter(self.env["HEADWATER_CLICKHOUSE_URL"], retry=once, connect_timeout=2,
                                           send_receive_timeout=10)
        self.snowflake = SnowflakeWriter(self.env["HEADWATER_SNOWFLAKE_URL"], password="fakesnow", retry=once,
                                         login_timeout=5, network_timeout=10)

    def lake_ids(self) -> Counter:
        try:
            return Counter(self.lake.read_table(columns=["event_id"]).column("event_id").to_pylist())
        except FileNotFoundError:
            return Counter()

    def counts(self, names: tuple[str, ...]) -> dict[str, int]:
        """Events stored per sink (one per event_id); 0 while a table does not exist yet or cannot be read."""
        readers: dict[str, Callable[[], int]] = {
            "lake": lambda: len(self.lake_ids()), "clickhouse": self.clickhouse.count_final,
            "snowflake": self.snowflake.count}
        out = {}
        for name in names:
            try:
                out[name] = readers[name]()
            except Exception:  # noqa: BLE001 - not created yet, or a reconnect after the restart
                self._reset(name)
                out[name] = 0
        return out

    def _reset(self, name: str) -> None:
        {"lake": self.lake, "clickhouse": self.clickhouse, "snowflake": self.snowflake}[name].close()

    def drop(self) -> None:
        try:
            self.clickhouse.query(f"DROP DATABASE IF EXISTS {self.clickhouse.target.database}")
            for table in ("EVENTS", "EVENTS_STAGING"):
                self.snowflake.query(f"DROP TABLE IF EXISTS {self.snowflake.target.qualified(table)}")
            t = self.snowflake.target
            self.snowflake.query(f"DROP SCHEMA IF EXISTS {t.database}.{t.schema}")
            self.lake.filesystem.rm(self.lake._base, recursive=True)
        finally:
            self.clickhouse.close()
            self.snowflake.close()
            self.lake.close()


class Outage:
    """Takes one sink's private service down and back: a stop and a start for the server that keeps its data on
    disk, a freeze and a thaw for the in-memory ones (their connections hang, as with a stalled endpoint)."""

    def __init__(self, stack, sink: str):
        self.stack = stack
        self.service = {"lake": "s3", "clickhouse": "clickhouse", "snowflake": "snowflake"}[sink]
        self.restart = self.service == "clickhouse"

    def begin(self) -> None:
        if self.restart:
            self.stack.down([self.service])
        else:
            os.kill(self.stack.pid_of(self.service), signal.SIGSTOP)

    def end(self) -> None:
        if self.restart:
            self.stack.up([self.service])
        else:
            os.kill(self.stack.pid_of(self.service), signal.SIGCONT)


def _events(n: int) -> tuple[list[tuple[bytes, bytes]], set[str]]:
    """``n`` encoded raw records (key, value) and their event ids."""
    events = []
    for i in range(n):
        event = identify_event(f"user-{i % 300}") if i % 5 == 0 else page_event(f"user-{i % 300}")
        event["timestamp"] = _now_iso(-2)
        events.append(event)
    records = [RawRecord(e, received_at=_now_iso(), gateway_id="gw-outage", sent_at=_now_iso(-1),
                         client_ip=PLANTED["client_ip"]) for e in events]
    return [(r.key, r.encode()) for r in records], {e["event_id"] for e in events}


def _start(env: dict[str, str], tmp_path: Path, topics, table: str) -> subprocess.Popen:
    call = (f"flows.run:get_flow(output='all', raw_topic='{topics['raw']}', invalid_topic='{topics['invalid']}', "
            f"plan_tier_table='{table}', batch_size=500)")
    log = open(tmp_path / "flow.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "bytewax.run", call, "-r", str(tmp_path / "recovery"),
                             "-s", "1", "-b", "0"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def _wait(flow: subprocess.Popen, sinks: Sinks, names: tuple[str, ...], at_least: int, timeout: float,
          tmp_path: Path) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    counts = sinks.counts(names)
    while min(counts.values()) < at_least and time.monotonic() < deadline:
        assert flow.poll() is None, (tmp_path / "flow.log").read_text(errors="replace")[-3000:]
        time.sleep(0.5)
        counts = sinks.counts(names)
    return counts


@pytest.mark.parametrize("down", ["clickhouse", "snowflake", "lake"])
def test_the_other_sinks_flow_on_while_one_is_down_and_it_catches_up_exactly_once(
        down, private_stack, devstack, stack_settings, topics, accounts_table, tmp_path):
    sinks = Sinks(private_stack, stack_settings, uuid.uuid4().hex[:8])
    others = tuple(n for n in ("lake", "clickhouse", "snowflake") if n != down)
    every = ("lake", "clickhouse", "snowflake")
    outage = Outage(private_stack, down)
    encoded, expected = _events(3 * PHASE)

    (tmp_path / "recovery").mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(tmp_path / "recovery"), "1"], check=True)
    env = {**_env(devstack, tmp_path, build_city_database(GEO_CSV, tmp_path / "city.mmdb")), **sinks.env}
    flow = _start(env, tmp_path, topics, accounts_table)
    in_outage = False
    try:
        _produce(stack_settings, topics["raw"], encoded[:PHASE])
        before = _wait(flow, sinks, every, PHASE, 40, tmp_path)
        assert min(before.values()) >= PHASE, f"the sinks did not take the first events: {before}"

        outage.begin()
        in_outage = True
        # The events keep arriving while the sink is down, so the flow must get past the sink's failing (or hanging)
        # writes to deliver them to the other two before the service comes back.
        trickle = threading.Thread(target=_produce_slowly, args=(stack_settings, topics["raw"],
                                                                 encoded[PHASE:2 * PHASE]),
                                   kwargs={"per_tick": 40, "tick_s": 0.1})
        trickle.start()
        during = _wait(flow, sinks, others, 2 * PHASE, OUTAGE_SECONDS, tmp_path)
        trickle.join(30)
        assert min(during.values()) >= 2 * PHASE, f"with {down} down the other sinks stalled: {during}"
        outage.end()
        in_outage = False

        _produce(stack_settings, topics["raw"], encoded[2 * PHASE:])
        after = _wait(flow, sinks, every, 3 * PHASE, 50, tmp_path)
        assert min(after.values()) >= 3 * PHASE, f"{down} did not catch up after its outage: {after}"
        time.sleep(2.5)  # a couple more epochs: a late duplicate would show up now
    finally:
        if in_outage:
            outage.end()
        flow.send_signal(signal.SIGINT)
        try:
            flow.wait(20)
        except subprocess.TimeoutExpired:
            flow.kill()

    try:
        lake = sinks.lake_ids()
        assert set(lake) == expected, f"{len(expected - set(lake))} events missing from the lake"
        assert set(lake.values()) == {1}, f"{sum(lake.values()) - len(lake)} duplicate rows in the lake"
        assert sinks.clickhouse.count_final() == sinks.clickhouse.distinct_event_ids() == len(expected)
        stored = {r[0] for r in sinks.clickhouse.query(
            f"SELECT DISTINCT event_id FROM {sinks.clickhouse.qualified_table}")}
        assert stored == expected
        assert sinks.snowflake.count() == sinks.snowflake.distinct_event_ids() == len(expected)
        stored = {r[0] for r in sinks.snowflake.query(f"SELECT EVENT_ID FROM {sinks.snowflake.table}")}
        assert stored == expected
        log = (tmp_path / "flow.log").read_text(errors="replace")
        assert f"sink {down}:" in log, "the outage never showed as a failed write"
        print(f"\n{down} down: others at {during} while it was down; before {before}; after {after}")
    finally:
        sinks.drop()
