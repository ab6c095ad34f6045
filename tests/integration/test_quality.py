"""``headwater quality`` against the real stores: the same rows in the lake (moto S3), ClickHouse (the Debian
server) and Snowflake (fakesnow), plan tiers from a PostgreSQL accounts table; every check passes, then one
discrepancy planted in one store at a time makes the report name that store and event_id and exit 1.

Each test has its own lake prefix, ClickHouse database, Snowflake schema, accounts table (and Kafka topics), so
nothing collides with other tests on the shared services."""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from quality.cli import main as quality_main
from sinks.base import RetryPolicy
from sinks.clickhouse import ClickHouseWriter
from sinks.s3_parquet import FILE_SCHEMA, ParquetLakeWriter
from sinks.snowflake import SnowflakeWriter
from tests.sinkrows import make_row

pytestmark = pytest.mark.integration

DAY = dt.date(2026, 12, 3)  # every make_row(n < 43000) falls on this event date
N_ROWS = 120
TIERS = ("free", "pro", "enterprise")


def _tier(user_number: int) -> str | None:
    """The accounts table's tier of user ``u{number}``; users divisible by 7 are not in the table."""
    return None if user_number % 7 == 0 else TIERS[user_number % 3]


@dataclass
class Env:
    settings: Any
    env: dict[str, str]
    lake: ParquetLakeWriter
    clickhouse: ClickHouseWriter
    snowflake: SnowflakeWriter
    accounts_table: str
    rows: list[dict[str, Any]]


def _rows(salt: str) -> list[dict[str, Any]]:
    rows = []
    for n in range(N_ROWS):
        user = n % 40
        user_id = None if n % 5 == 0 else f"u{user:04d}"
        tier = "anonymous" if user_id is None else (_tier(user) or "unknown")
        rows.append(make_row(n, salt, user_id=user_id, plan_tier=tier))
    return rows


@pytest.fixture()
def env(devstack, stack_settings, monkeypatch):
    import psycopg

    suffix = uuid.uuid4().hex[:8]
    bucket = stack_settings.s3_url.removeprefix("s3://").split("/")[0]
    overrides = {
        "HEADWATER_S3_URL": f"s3://{bucket}/it-quality-{suffix}",
        "HEADWATER_CLICKHOUSE_URL": f"clickhouse://127.0.0.1:{devstack.ports['clickhouse']}/hw_quality_{suffix}",
        "HEADWATER_SNOWFLAKE_URL": f"snowflake://headwater@fakesnow/ANALYTICS/HWQ_{suffix.upper()}"
                                   f"?host=127.0.0.1&port={devstack.ports['snowflake']}&protocol=http",
        "HEADWATER_PLAN_TIER_TABLE": f"accounts_quality_{suffix}",
        "HEADWATER_KAFKA_TOPIC_RAW": f"test.quality.raw.{suffix}",
        "HEADWATER_KAFKA_TOPIC_INVALID": f"test.quality.invalid.{suffix}",
    }
    values = {**devstack.env(), **overrides}
    for key in [k for k in os.environ if k.startswith("HEADWATER_")]:
        monkeypatch.delenv(key)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    settings = stack_settings.model_copy(update={k.removeprefix("HEADWATER_").lower(): v
                                                 for k, v in overrides.items()})
    table = overrides["HEADWATER_PLAN_TIER_TABLE"]
    with psycopg.connect(settings.postgres_url.reveal(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (user_id text primary key, plan_tier text, updated_at timestamptz)")
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {table} VALUES (%s, %s, '2026-01-01T00:00:00Z')",
                            [(f"u{i:04d}", _tier(i)) for i in range(40) if _tier(i) is not None])
    retry = RetryPolicy(attempts=2, base_delay=0.05)
    lake = ParquetLakeWriter.from_settings(settings, retry=retry)
    clickhouse = ClickHouseWriter.from_settings(settings, retry=retry)
    snowflake = SnowflakeWriter.from_settings(settings, retry=retry)
    rows = _rows(suffix)
    for writer in (lake, clickhouse, snowflake):
        writer.write(rows)
    yield Env(settings, values, lake, clickhouse, snowflake, table, rows)
    try:
        clickhouse.query(f"DROP DATABASE IF EXISTS {clickhouse.target.database}")
        for name in ("EVENTS", "EVENTS_STAGING"):
            snowflake.query(f"DROP TABLE IF EXISTS {snowflake.target.qualified(name)}")
        snowflake.query(f"DROP SCHEMA IF EXISTS {snowflake.target.database}.{snowflake.target.schema}")
        lake.filesystem.rm(f"{lake.root.removeprefix('s3://')}", recursive=True)
        with psycopg.connect(settings.postgres_url.reveal(), autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
    finally:
        for writer in (lake, clickhouse, snowflake):
            writer.close()


def _run(capsys, *extra: str) -> tuple[int, dict[str, Any]]:
    code = quality_main(["--from", DAY.isoformat(), "--to", DAY.isoformat(), "--format", "json", *extra])
    return code, json.loads(capsys.readouterr().out)


def _check(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in report["checks"] if c["name"] == name)


def _flagged(check: dict[str, Any], severity: str = "FAIL") -> set[tuple[str, str]]:
    return {(f["store"], f["event_id"]) for f in check["findings"] if f["severity"] == severity}


def _lake_object(lake: ParquetLakeWriter, event_id: str) -> tuple[str, Any]:
    """The lake object holding ``event_id`` and its table."""
    for path in lake.filesystem.find(f"{lake.root.removeprefix('s3://')}/events"):
        table = pq.read_table(lake.filesystem.open(path, "rb"), schema=FILE_SCHEMA)
        if event_id in table.column("event_id").to_pylist():
            return path, table
    raise AssertionError(f"{event_id} is in no lake object")


def _wait_mutation(writer: ClickHouseWriter) -> None:
    deadline = time.monotonic() + 30
    while writer.query(f"SELECT count() FROM system.mutations WHERE database = '{writer.target.database}' "
                       f"AND is_done = 0")[0][0]:
        assert time.monotonic() < deadline, "ClickHouse mutation did not finish"
        time.sleep(0.1)


def test_identical_stores_pass_in_text_and_json(env, capsys):
    assert quality_main(["--from", DAY.isoformat(), "--to", DAY.isoformat()]) == 0
    text = capsys.readouterr().out
    assert "RESULT: PASS" in text and "== reconciliation: PASS" in text
    assert re.search(rf"{DAY}\s+{N_ROWS}\s+{N_ROWS}\s+{N_ROWS}\s+PASS", text), text
    code, report = _run(capsys)
    assert code == 0 and report["status"] == "PASS"
    assert [c["name"] for c in report["checks"]] == ["reconciliation", "duplicates", "mandatory_fields",
                                                     "referential_integrity"]
    assert _check(report, "reconciliation")["rows"] == [
        {"date": DAY.isoformat(), "lake distinct": N_ROWS, "clickhouse distinct": N_ROWS,
         "snowflake distinct": N_ROWS, "status": "PASS"}]
    integrity = _check(report, "referential_integrity")
    unknown_rows = sum(1 for r in env.rows if r["plan_tier"] == "unknown")
    for row in integrity["rows"]:
        assert row["unknown-user rows"] == row["tier=unknown rows"] == unknown_rows > 0
        assert row["unknown users"] == len({r["user_id"] for r in env.rows if r["plan_tier"] == "unknown"})
    # Unknown users are listed (as information), with an event of theirs.
    assert {f["store"] for f in integrity["findings"] if f["severity"] == "INFO"} == {"lake", "clickhouse",
                                                                                      "snowflake"}


@pytest.mark.parametrize("store", ["lake", "clickhouse", "snowflake"])
def test_a_row_deleted_from_one_store_is_named(env, capsys, store):
    victim = env.rows[7]["event_id"]
    if store == "lake":
        path, table = _lake_object(env.lake, victim)
        kept = table.filter(pc.invert(pc.equal(table.column("event_id"), victim)))
        with env.lake.filesystem.open(path, "wb") as fh:
            pq.write_table(kept, fh)
    elif store == "clickhouse":
        env.clickhouse.query(f"ALTER TABLE {env.clickhouse.qualified_table} DELETE WHERE event_id = '{victim}'")
        _wait_mutation(env.clickhouse)
    else:
        env.snowflake.query(f"DELETE FROM {env.snowflake.table} WHERE EVENT_ID = '{victim}'")
    code, report = _run(capsys)
    assert code == 1 and report["status"] == "FAIL"
    reconciliation = _check(report, "reconciliation")
    assert reconciliation["status"] == "FAIL"
    assert _flagged(reconciliation) == {(store, victim)}
    assert reconciliation["rows"][0][f"{store} distinct"] == N_ROWS - 1
    others = {"lake", "clickhouse", "snowflake"} - {store}
    assert all(reconciliation["rows"][0][f"{o} distinct"] == N_ROWS for o in others)


@pytest.mark.parametrize("store", ["lake", "snowflake"])
def test_a_duplicate_in_the_lake_or_snowflake_fails(env, capsys, store):
    row = env.rows[11]
    if store == "lake":
        # The same event again at another Kafka offset (a gateway retry): another object, a second copy.
        env.lake.write([{**row, "kafka_offset": row["kafka_offset"] + 50_000}])
    else:
        env.snowflake.query(f"INSERT INTO {env.snowflake.table} SELECT * FROM {env.snowflake.table} "
                            f"WHERE EVENT_ID = '{row['event_id']}'")
    code, report = _run(capsys)
    assert code == 1
    duplicates = _check(report, "duplicates")
    assert duplicates["status"] == "FAIL" and _flagged(duplicates) == {(store, row["event_id"])}
    assert _check(report, "reconciliation")["status"] == "PASS"  # distinct ids still agree


def test_a_clickhouse_copy_under_another_date_fails(env, capsys):
    # FINAL collapses copies within a partition only (the table is partitioned by month of event_date): the same
    # event under a date of the previous month stays twice.
    row = env.rows[17]
    before = dt.date(2026, 11, 30)
    env.clickhouse.write([{**row, "event_date": before, "timestamp": row["timestamp"] - dt.timedelta(days=3)}])
    code = quality_main(["--from", before.isoformat(), "--to", DAY.isoformat(), "--format", "json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    duplicates = _check(report, "duplicates")
    assert duplicates["status"] == "FAIL" and _flagged(duplicates) == {("clickhouse", row["event_id"])}
    assert _flagged(_check(report, "reconciliation")) == {("lake", row["event_id"]), ("snowflake", row["event_id"])}


def test_unmerged_clickhouse_copies_are_allowed(env, capsys):
    env.clickhouse.write(env.rows[:5])  # a replay: copies until a merge, hidden by FINAL
    code, report = _run(capsys)
    assert code == 0, report
    duplicates = _check(report, "duplicates")
    ch = next(r for r in duplicates["rows"] if r["store"] == "clickhouse")
    assert ch["unmerged (allowed)"] == 5 and ch["duplicates"] == 0 and duplicates["status"] == "PASS"
    assert any("unmerged" in note for note in duplicates["notes"])


@pytest.mark.parametrize("store", ["lake", "clickhouse", "snowflake"])
def test_a_missing_mandatory_field_is_named(env, capsys, store):
    row = env.rows[13]
    if store == "lake":
        env.lake.write([{**row, "pii_salt_id": None}])  # same Kafka coordinates: replaces the row in its object
    elif store == "clickhouse":
        # A newer version of the row (ReplacingMergeTree keeps the latest received_at): FINAL reads the empty one.
        later = row["received_at"] + dt.timedelta(seconds=5)
        env.clickhouse.write([{**row, "pii_salt_id": None, "received_at": later}])
    else:
        env.snowflake.query(f"UPDATE {env.snowflake.table} SET PII_SALT_ID = NULL WHERE EVENT_ID = '{row['event_id']}'")
    code, report = _run(capsys)
    assert code == 1
    fields = _check(report, "mandatory_fields")
    assert fields["status"] == "FAIL" and _flagged(fields) == {(store, row["event_id"])}
    line = next(r for r in fields["rows"] if r["field"] == "pii_salt_id")
    assert line[f"{store} missing"] == 1 and line["status"] == "FAIL"
    assert {f["problem"].split()[0] for f in fields["findings"]} == {"pii_salt_id"}


@pytest.mark.parametrize("store", ["lake", "clickhouse", "snowflake"])
def test_a_plan_tier_the_accounts_table_contradicts_is_named(env, capsys, store):
    row = next(r for r in env.rows if r["plan_tier"] == "free")
    if store == "lake":
        env.lake.write([{**row, "plan_tier": "enterprise"}])
    elif store == "clickhouse":
        env.clickhouse.write([{**row, "plan_tier": "enterprise",
                               "received_at": row["received_at"] + dt.timedelta(seconds=5)}])
    else:
        env.snowflake.query(f"UPDATE {env.snowflake.table} SET PLAN_TIER = 'enterprise' "
                            f"WHERE EVENT_ID = '{row['event_id']}'")
    code, report = _run(capsys)
    assert code == 1
    integrity = _check(report, "referential_integrity")
    assert integrity["status"] == "FAIL" and _flagged(integrity) == {(store, row["event_id"])}
    line = next(r for r in integrity["rows"] if r["store"] == store)
    assert line["wrong tier (FAIL)"] == 1 and line["status"] == "FAIL"


def test_a_tier_changed_after_the_events_is_a_warning(env, capsys):
    import psycopg

    user = next(r["user_id"] for r in env.rows if r["plan_tier"] == "pro")
    affected = {r["event_id"] for r in env.rows if r["user_id"] == user}
    with psycopg.connect(env.settings.postgres_url.reveal(), autocommit=True) as conn:
        conn.execute(f"UPDATE {env.accounts_table} SET plan_tier = 'enterprise', updated_at = now() "
                     f"WHERE user_id = %s", (user,))
    code, report = _run(capsys)
    assert code == 0 and report["status"] == "WARN"
    integrity = _check(report, "referential_integrity")
    assert integrity["status"] == "WARN"
    assert _flagged(integrity, "WARN") == {(s, e) for s in ("lake", "clickhouse", "snowflake") for e in affected}


def test_an_unknown_user_with_a_tier_fails(env, capsys):
    import psycopg

    row = next(r for r in env.rows if r["plan_tier"] == "pro")
    with psycopg.connect(env.settings.postgres_url.reveal(), autocommit=True) as conn:
        conn.execute(f"DELETE FROM {env.accounts_table} WHERE user_id = %s", (row["user_id"],))
    code, report = _run(capsys, "--stores", "lake")
    assert code == 1
    integrity = _check(report, "referential_integrity")
    assert ("lake", row["event_id"]) in _flagged(integrity)
    assert _check(report, "reconciliation")["status"] == "SKIP"  # one store: nothing to reconcile


def _produce(settings, topic: str, records: list[tuple[bytes, bytes]]) -> list[tuple[int, int]]:
    """Produce and return each record's (partition, offset)."""
    from confluent_kafka import Producer

    where: list[tuple[int, int]] = [(-1, -1)] * len(records)
    producer = Producer(settings.kafka_config(acks="all", **{"linger.ms": 5}))
    for i, (key, value) in enumerate(records):
        producer.produce(topic, value, key=key,
                         on_delivery=lambda err, msg, i=i: where.__setitem__(i, (msg.partition(), msg.offset())))
    assert producer.flush(30) == 0
    return where


@pytest.fixture()
def topics(env):
    from confluent_kafka.admin import AdminClient, NewTopic

    names = [env.settings.kafka_topic_raw, env.settings.kafka_topic_invalid]
    admin = AdminClient(env.settings.kafka_config())
    for future in admin.create_topics([NewTopic(n, 4, 1) for n in names]).values():
        future.result(15)
    yield names
    try:
        admin.delete_topics(names)
    except Exception:
        pass


def test_kafka_reconciliation_by_receive_date(env, topics, capsys):
    from flows.stages import DeadLetter
    from schemas.wire import RawRecord

    def raw(event_id: str, received: dt.datetime) -> tuple[bytes, bytes]:
        record = RawRecord({"event": "page_viewed", "event_id": event_id, "timestamp": received.isoformat(),
                            "anonymous_id": "a-1", "properties": {"path": "/"}},
                           received_at=received.isoformat().replace("+00:00", "Z"), gateway_id="gw-it")
        return record.key, record.encode()

    valid = [raw(r["event_id"], r["received_at"]) for r in env.rows]
    bad_id = str(uuid.uuid4())
    invalid = raw(bad_id, env.rows[0]["received_at"])
    coordinates = _produce(env.settings, env.settings.kafka_topic_raw, valid + [invalid])
    partition, offset = coordinates[-1]
    letter = DeadLetter("validate", [{"path": "properties", "message": "planted"}], env.settings.kafka_topic_raw,
                        partition, offset, key=invalid[0], original=invalid[1], event_id=bad_id, event="page_viewed")
    _produce(env.settings, env.settings.kafka_topic_invalid, [(invalid[0], letter.encode())])
    _produce(env.settings, env.settings.kafka_topic_raw, valid[:3])  # at-least-once: repeats change nothing

    code, report = _run(capsys, "--kafka", "--kafka-timeout", "60")
    kafka = _check(report, "kafka")
    assert code == 0 and kafka["status"] == "PASS", kafka
    assert kafka["rows"][0]["raw topic valid"] == N_ROWS
    assert any("1 dead-lettered" in n and "3 repeated" in n for n in kafka["notes"])

    # An accepted event that reached no store: every store is named with it.
    lost = str(uuid.uuid4())
    _produce(env.settings, env.settings.kafka_topic_raw, [raw(lost, env.rows[5]["received_at"])])
    code, report = _run(capsys, "--kafka", "--kafka-timeout", "60")
    kafka = _check(report, "kafka")
    assert code == 1 and kafka["status"] == "FAIL"
    assert _flagged(kafka) == {(s, lost) for s in ("lake", "clickhouse", "snowflake")}


def test_unreachable_store_is_a_connection_error(env, capsys, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HEADWATER_CLICKHOUSE_URL", f"clickhouse://127.0.0.1:{port}/nowhere")
    code = quality_main(["--from", DAY.isoformat(), "--to", DAY.isoformat(), "--stores", "clickhouse"])
    err = capsys.readouterr().err
    assert code == 2 and "quality: cannot read clickhouse:" in err and str(port) in err


def test_absent_snowflake_table_is_a_clear_error(env, capsys, monkeypatch):
    monkeypatch.setenv("HEADWATER_SNOWFLAKE_URL", env.env["HEADWATER_SNOWFLAKE_URL"].replace("/HWQ_", "/NOPE_"))
    code = quality_main(["--from", DAY.isoformat(), "--to", DAY.isoformat(), "--stores", "snowflake"])
    err = capsys.readouterr().err
    assert code == 2 and "quality: cannot read snowflake:" in err and "NOPE_" in err
