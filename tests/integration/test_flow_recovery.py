"""The flow as operators run it: a `python -m bytewax.run` subprocess over the real broker and PostgreSQL,
SIGKILLed mid-stream and restarted from its recovery store; then dead letters replayed once a schema is fixed."""
from __future__ import annotations

import base64
import datetime as dt
import json
import os
import shutil
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
from headwater.settings import quarter_of
from schemas.wire import RawRecord
from tests.flowkit import GEO_CSV, PLANTED, identify_event, page_event

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
N_VALID = 8000
N_INVALID = 40
PARTITIONS = 4


def _now_iso(offset_s: float = 0.0) -> str:
    return (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=offset_s)).isoformat().replace("+00:00", "Z")


@pytest.fixture()
def topics(stack_settings):
    from confluent_kafka.admin import AdminClient, NewTopic

    suffix = uuid.uuid4().hex[:10]
    names = {k: f"test.flow.{k}.{suffix}" for k in ("raw", "invalid", "replayed")}
    admin = AdminClient(stack_settings.kafka_config())
    for future in admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names.values()]).values():
        future.result(15)
    yield names
    try:
        admin.delete_topics(list(names.values()))
    except Exception:
        pass


@pytest.fixture()
def accounts_table(stack_settings):
    import psycopg

    table = f"accounts_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(stack_settings.postgres_url.reveal(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (user_id text primary key, plan_tier text, updated_at timestamptz)")
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {table} VALUES (%s, %s, now())",
                            [(f"user-{i}", ("free", "pro", "enterprise")[i % 3]) for i in range(0, 300, 2)])
    yield table
    with psycopg.connect(stack_settings.postgres_url.reveal(), autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")


def _produce(settings, topic: str, values: list[tuple[bytes, bytes]]) -> None:
    from confluent_kafka import Producer

    producer = Producer(settings.kafka_config(acks="all", **{"linger.ms": 20}))
    for key, value in values:
        producer.produce(topic, value, key=key)
        producer.poll(0)
    assert producer.flush(30) == 0


def _produce_slowly(settings, topic: str, values: list[tuple[bytes, bytes]], per_tick: int = 100,
                    tick_s: float = 0.05) -> None:
    """Events arriving over time (about 2,000/s), so that a kill lands in the middle of the stream."""
    for start in range(0, len(values), per_tick):
        _produce(settings, topic, values[start:start + per_tick])
        time.sleep(tick_s)


def _consume_all(settings, topic: str, idle_s: float = 3.0, timeout_s: float = 30.0) -> list:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(settings.kafka_config(**{"group.id": f"t-{uuid.uuid4().hex[:8]}", "fetch.wait.max.ms": 10,
                                                 "enable.auto.commit": False}))
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    out, last, start = [], time.monotonic(), time.monotonic()
    try:
        while time.monotonic() - last < idle_s and time.monotonic() - start < timeout_s:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                out.append(msg)
                last = time.monotonic()
    finally:
        consumer.close()
    return out


def _env(devstack, tmp_path: Path, geo_db: Path) -> dict[str, str]:
    key = lambda label: base64.b64encode(f"{label}-integration-salt-0123456789".encode()).decode()
    today = dt.datetime.now(dt.timezone.utc).date()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
    env.update(devstack.env())
    env.update({"HEADWATER_PII_SALTS": f"{quarter_of(today)}:{key('q')}",
                "HEADWATER_GEOIP_DB": str(geo_db), "HEADWATER_DATA_DIR": str(tmp_path / "data"),
                "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"})
    return env


def _start_flow(env, tmp_path: Path, topics, table: str, run: int) -> subprocess.Popen:
    call = (f"flows.run:get_flow(output='jsonl:{tmp_path / 'rows'}', raw_topic='{topics['raw']}', "
            f"invalid_topic='{topics['invalid']}', plan_tier_table='{table}', batch_size=500, batch_timeout_ms=200)")
    log = open(tmp_path / f"flow-{run}.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "bytewax.run", call, "-r", str(tmp_path / "recovery"),
                             "-s", "1", "-b", "0"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def _wait_rows(tmp_path: Path, proc: subprocess.Popen, enough, timeout_s: float) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    rows: list[dict] = []
    while time.monotonic() < deadline:
        rows = read_json_lines(tmp_path / "rows")
        if enough(rows):
            return rows
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    return rows


def test_sigkill_mid_stream_and_restart_from_recovery_loses_nothing(devstack, stack_settings, topics,
                                                                     accounts_table, tmp_path):
    geo_db = build_city_database(GEO_CSV, tmp_path / "city.mmdb")
    valid = []
    for i in range(N_VALID):
        event = identify_event(f"user-{i % 300}") if i % 5 == 0 else page_event(f"user-{i % 300}")
        event["timestamp"] = _now_iso(-2)
        valid.append(event)
    invalid = []
    for i in range(N_INVALID):
        event = page_event(f"user-{i}")
        event["timestamp"] = _now_iso(-2)
        del event["properties"]["url"]
        invalid.append(event)
    records = [RawRecord(e, received_at=_now_iso(), gateway_id="gw-it", sent_at=_now_iso(-1),
                         client_ip=PLANTED["client_ip"]) for e in valid + invalid]
    encoded = [(r.key, r.encode()) for r in records]
    half = N_VALID // 2

    (tmp_path / "recovery").mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(tmp_path / "recovery"), "1"], check=True)
    env = _env(devstack, tmp_path, geo_db)
    expected = {e["event_id"] for e in valid}

    # First half, then let a few snapshots commit; the second half is in flight when the flow is SIGKILLed.
    _produce(stack_settings, topics["raw"], encoded[:half])
    first = _start_flow(env, tmp_path, topics, accounts_table, 1)
    try:
        rows = _wait_rows(tmp_path, first, lambda rs: len(rs) >= half, 60)
        assert len(rows) >= half, (tmp_path / "flow-1.log").read_text()[-3000:]
        time.sleep(2.5)
        rest = encoded[half:] + [(b"x", b"not json")]
        trickle = threading.Thread(target=_produce_slowly, args=(stack_settings, topics["raw"], rest))
        trickle.start()
        _wait_rows(tmp_path, first, lambda rs: len(rs) > half + 1000, 30)
        assert first.poll() is None, (tmp_path / "flow-1.log").read_text()[-3000:]
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        trickle.join(30)
    finally:
        if first.poll() is None:
            first.kill()
    killed_at = len(read_json_lines(tmp_path / "rows"))
    assert 0 < killed_at, "the flow wrote nothing before it was killed"

    second = _start_flow(env, tmp_path, topics, accounts_table, 2)
    started = time.monotonic()
    try:
        rows = _wait_rows(tmp_path, second, lambda rs: expected <= {r["event_id"] for r in rs}, 60)
        elapsed = time.monotonic() - started
        assert second.poll() is None, (tmp_path / "flow-2.log").read_text()[-3000:]
    finally:
        second.send_signal(signal.SIGINT)
        try:
            second.wait(10)
        except subprocess.TimeoutExpired:
            second.kill()

    seen = Counter(r["event_id"] for r in rows)
    missing = expected - set(seen)
    assert not missing, f"{len(missing)} events lost"
    assert set(seen) == expected  # invalid events never reach the rows
    duplicates = sum(seen.values()) - len(seen)
    assert duplicates < killed_at - half // 2, "the restart did not resume from the recovery snapshot"
    print(f"\nkilled after {killed_at} of {N_VALID} rows; {duplicates} duplicate rows after the restart; "
          f"second run finished the rest in {elapsed:.1f}s")

    tiers = {r["user_id"]: r["plan_tier"] for r in rows}
    assert tiers["user-0"] == "free" and tiers["user-2"] == "enterprise" and tiers["user-4"] == "pro"
    assert tiers["user-1"] == "unknown"
    # identify events carry context.ip (London), which wins over the gateway's client_ip (Berlin)
    assert {(r["event"], r["country"], r["ip_truncated"]) for r in rows} == {
        ("identify", "GB", "81.2.69.0"), ("page_viewed", "DE", "2a02:ec0:1::")}
    text = (tmp_path / "rows").joinpath("rows-0.jsonl").read_text().lower()
    for value in PLANTED.values():
        assert value.lower() not in text

    letters = _consume_all(stack_settings, topics["invalid"])
    coordinates = {json.loads(m.value())["source_offset"] for m in letters}
    stages = Counter(json.loads(m.value())["stage"] for m in letters)
    assert stages["decode"] >= 1 and stages["validate"] >= N_INVALID
    assert len({(json.loads(m.value())["source_partition"], json.loads(m.value())["source_offset"])
                for m in letters}) == N_INVALID + 1
    assert coordinates

    # The schema gets fixed (url no longer required): replay re-drives exactly the now-valid dead letters.
    from flows.replay import replay_dead_letters
    from schemas.registry import DEFAULT_DIRECTORY, SchemaRegistry

    fixed = tmp_path / "schemas"
    shutil.copytree(DEFAULT_DIRECTORY, fixed, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    page = json.loads((fixed / "page_viewed.schema.json").read_text())
    page["required"] = ["path"]
    (fixed / "page_viewed.schema.json").write_text(json.dumps(page))
    # The originals are sealed under the flow's PII salts: replay runs with the flow's settings, and with other
    # salts it can open none of them.
    from headwater.settings import load_settings

    stranger = replay_dead_letters(stack_settings, SchemaRegistry.load(fixed), from_topic=topics["invalid"],
                                   to_topic=topics["replayed"], idle_seconds=2, dry_run=True)
    assert stranger.unreadable == len(letters) - stages["enrich"] and stranger.replayed == 0
    report = replay_dead_letters(load_settings(env), SchemaRegistry.load(fixed), from_topic=topics["invalid"],
                                 to_topic=topics["replayed"], idle_seconds=2)
    assert report.replayed == stages["validate"] and report.still_invalid == stages["decode"]
    replayed = _consume_all(stack_settings, topics["replayed"], idle_s=2)
    assert {json.loads(m.value())["event"]["event_id"] for m in replayed} == {
        e["event_id"] for e in invalid}
