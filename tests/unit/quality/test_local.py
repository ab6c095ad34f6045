"""The checks end to end without services: a lake in a local directory (the real ParquetLakeWriter) and the
embedded SQLite accounts table, through the command line; plus the CLI's usage errors and the SQL it renders."""
from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3

import pyarrow as pa
import pytest

from quality.cli import main as quality_main
from quality.stores import _missing_mask, clickhouse_missing_condition, snowflake_missing_condition
from sinks.s3_parquet import ParquetLakeWriter
from tests.sinkrows import make_row

DAY = "2026-12-03"


@pytest.fixture()
def local(tmp_path, monkeypatch):
    for key in [k for k in os.environ if k.startswith("HEADWATER_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HEADWATER_S3_URL", str(tmp_path / "lake"))
    monkeypatch.setenv("HEADWATER_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    with sqlite3.connect(tmp_path / "data" / "accounts.sqlite3") as conn:
        conn.execute("CREATE TABLE accounts (user_id TEXT PRIMARY KEY, plan_tier TEXT, updated_at TEXT)")
        conn.executemany("INSERT INTO accounts VALUES (?, ?, '2026-01-01T00:00:00+00:00')",
                         [("u-pro", "pro"), ("u-free", "free")])
    rows = [make_row(n, "local", user_id=("u-pro", "u-free", None, "u-ghost")[n % 4],
                     plan_tier=("pro", "free", "anonymous", "unknown")[n % 4]) for n in range(40)]
    lake = ParquetLakeWriter(str(tmp_path / "lake"))
    lake.write(rows)
    yield lake, rows
    lake.close()


def _json(capsys, *args: str) -> tuple[int, dict]:
    code = quality_main(["--from", DAY, "--to", DAY, "--stores", "lake", "--format", "json", *args])
    return code, json.loads(capsys.readouterr().out)


def test_a_clean_local_lake_passes(local, capsys):
    code, report = _json(capsys)
    assert code == 0, report
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["reconciliation"]["status"] == "SKIP"
    assert checks["duplicates"]["rows"][0]["rows"] == 40
    integrity = checks["referential_integrity"]["rows"][0]
    assert (integrity["unknown users"], integrity["unknown-user rows"], integrity["tier=unknown rows"]) == (1, 10, 10)


def test_a_duplicate_a_null_and_a_wrong_tier_fail(local, capsys):
    lake, rows = local
    lake.write([{**rows[1], "kafka_offset": 50_000},          # same event in another offset window: a 2nd copy
                {**rows[2], "event": None},                   # replaces itself: event missing
                {**rows[3], "plan_tier": "pro"}])             # a user the accounts table does not know
    code, report = _json(capsys)
    assert code == 1
    checks = {c["name"]: c for c in report["checks"]}
    assert [(f["store"], f["event_id"]) for f in checks["duplicates"]["findings"]] == [("lake", rows[1]["event_id"])]
    missing = checks["mandatory_fields"]["findings"]
    assert ("lake", rows[2]["event_id"]) in {(f["store"], f["event_id"]) for f in missing}
    wrong = [f for f in checks["referential_integrity"]["findings"] if f["severity"] == "FAIL"]
    assert [f["event_id"] for f in wrong] == [rows[3]["event_id"]] and "'u-ghost'" in wrong[0]["problem"]


def test_an_absent_lake_is_a_usage_error(tmp_path, monkeypatch, capsys):
    for key in [k for k in os.environ if k.startswith("HEADWATER_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HEADWATER_S3_URL", str(tmp_path / "nothing-here"))
    monkeypatch.setenv("HEADWATER_DATA_DIR", str(tmp_path / "data"))
    assert quality_main(["--from", DAY, "--to", DAY, "--stores", "lake"]) == 2
    assert "quality: cannot read lake: no events/ directory under" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--from", "2026-12-04", "--to", "2026-12-03"], "--to is before --from"),
    (["--from", "2025-01-01", "--to", "2026-12-03"], "at most 366 days"),
    (["--from", DAY, "--to", DAY, "--max-ids", "-1"], "--max-ids must not be negative"),
])
def test_usage_errors_exit_2(argv, message, capsys):
    assert quality_main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--from", "03.12.2026", "--to", DAY], "is not a date like 2026-12-03"),
    (["--from", DAY, "--to", DAY, "--stores", "lake,bigquery"], "unknown store(s) bigquery"),
    (["--from", DAY, "--to", DAY, "--format", "xml"], "invalid choice"),
    (["--to", DAY], "--from"),
])
def test_argument_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        quality_main(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_missing_conditions_per_type():
    assert clickhouse_missing_condition("event", "LowCardinality(String)") == "`event` = ''"
    assert clickhouse_missing_condition("plan_tier", "LowCardinality(Nullable(String))") == \
        "(isNull(`plan_tier`) OR assumeNotNull(`plan_tier`) = '')"
    assert clickhouse_missing_condition("timestamp", "DateTime('UTC')") == "toUnixTimestamp(`timestamp`) = 0"
    assert clickhouse_missing_condition("event_date", "Date") == "`event_date` = toDate('1970-01-01')"
    assert clickhouse_missing_condition("kafka_offset", "Nullable(Int64)") == "isNull(`kafka_offset`)"
    assert clickhouse_missing_condition("n", "UInt16") == "0"
    assert snowflake_missing_condition("EVENT", "VARCHAR") == "COALESCE(EVENT, '') = ''"
    assert snowflake_missing_condition("CONTEXT", "VARIANT") == "CONTEXT IS NULL"


def test_missing_mask_counts_nulls_empty_strings_and_the_epoch():
    text = pa.chunked_array([["a", "", None]])
    times = pa.chunked_array([[dt.datetime(2026, 12, 3, tzinfo=dt.timezone.utc), dt.datetime(1970, 1, 1), None]],
                             type=pa.timestamp("us", tz="UTC"))
    numbers = pa.chunked_array([[0, None, 3]])
    assert _missing_mask(text).to_pylist() == [False, True, True]
    assert _missing_mask(times).to_pylist() == [False, True, True]
    assert _missing_mask(numbers).to_pylist() == [False, True, False]


def test_an_event_under_two_dates_is_a_duplicate(local, capsys):
    lake, rows = local
    lake.write([{**rows[5], "event_date": dt.date(2026, 12, 2)}])
    code = quality_main(["--from", "2026-12-02", "--to", DAY, "--stores", "lake", "--format", "json"])
    report = json.loads(capsys.readouterr().out)
    duplicates = next(c for c in report["checks"] if c["name"] == "duplicates")
    assert code == 1 and duplicates["status"] == "FAIL"
    assert [(f["event_id"], f["problem"]) for f in duplicates["findings"]] == [
        (rows[5]["event_id"], "stored on 2026-12-02 and again on 2026-12-03")]
