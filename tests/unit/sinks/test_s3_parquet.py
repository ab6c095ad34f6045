"""The lake writer on a local directory: hive layout, a schema that never moves, and replays that never duplicate."""
from __future__ import annotations

import datetime as dt
import json
import random
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sinks.base import ROW_COLUMNS, RetryPolicy, SinkError
from sinks.s3_parquet import FILE_SCHEMA, LAKE_SCHEMA, ParquetLakeWriter
from tests.flowkit import make_settings
from tests.lakekit import lake_row, rows


@pytest.fixture()
def lake(tmp_path):
    return ParquetLakeWriter(str(tmp_path / "lake"), rows_per_file=100, retry=RetryPolicy(attempts=1))


def files(tmp_path):
    return sorted(p.relative_to(tmp_path / "lake").as_posix() for p in (tmp_path / "lake").rglob("*.parquet"))


def test_rows_land_in_hive_date_directories_as_zstd_parquet(lake, tmp_path):
    day2 = dt.date(2026, 12, 4)
    lake.write(rows(range(0, 5)) + rows(range(5, 8), day=day2) + rows(range(0, 3), partition=1))
    names = files(tmp_path)
    assert {n.split("/")[1] for n in names} == {"event_date=2026-12-03", "event_date=2026-12-04"}
    assert all(n.startswith("events/") for n in names) and len(names) == 3
    one = pq.ParquetFile(tmp_path / "lake" / names[0])
    assert one.schema_arrow == FILE_SCHEMA  # the partition column lives in the path only
    assert one.metadata.row_group(0).column(0).compression == "ZSTD"
    table = lake.read_table()
    assert table.schema == LAKE_SCHEMA and table.num_rows == 11
    assert Counter(table.column("event_date").to_pylist()) == {dt.date(2026, 12, 3): 8, day2: 3}
    assert list(table.schema.names) == list(ROW_COLUMNS)


def test_schema_stays_the_same_when_properties_change(lake, tmp_path):
    lake.write([lake_row(0, properties={"a": 1})])
    lake.write([lake_row(1, properties={"b": [1, 2], "nested": {"x": "y"}})])
    lake.write([lake_row(2, properties={})] + [lake_row(150, properties={"c": None})])
    lake.write([dict(lake_row(3), properties={"as": "dict"}, consent={"analytics": True})])  # encoded on the way
    schemas = {pq.read_schema(tmp_path / "lake" / n) for n in files(tmp_path)}
    assert schemas == {FILE_SCHEMA}
    table = lake.read_table().to_pylist()
    by_offset = {r["kafka_offset"]: r for r in table}
    assert json.loads(by_offset[1]["properties"]) == {"b": [1, 2], "nested": {"x": "y"}}
    assert json.loads(by_offset[3]["consent"]) == {"analytics": True}
    assert by_offset[0]["timestamp"].tzinfo is not None


def test_windows_are_a_function_of_the_row_bounded_by_offsets_and_time(lake):
    a, b = lake_row(99), lake_row(100)
    assert lake.window_name(a) != lake.window_name(b)  # size bound: a new window every rows_per_file offsets
    late = lake_row(5, received_at=lake_row(5)["received_at"] + dt.timedelta(hours=1))
    assert lake.window_name(late) != lake.window_name(lake_row(5))  # time bound: a new slice every slice_seconds
    assert lake.window_name(lake_row(7, partition=2)) != lake.window_name(lake_row(7))
    assert lake.window_name(lake_row(7)) == lake.window_name(lake_row(7))


def test_new_rows_are_plain_writes_and_small_segments_are_extended(tmp_path):
    lake = ParquetLakeWriter(str(tmp_path / "lake"), rows_per_file=1000, append_below=50,
                             retry=RetryPolicy(attempts=1))
    lake.write(rows(range(0, 30)))
    lake.write(rows(range(30, 40)))  # the 30-row segment is small: extended in place, under its name
    assert [n.rsplit("-", 1)[1] for n in files(tmp_path)] == [f"{0:020d}.parquet"]
    lake.write(rows(range(40, 140)))  # now 40 rows, still small: 140 rows after this write
    lake.write(rows(range(140, 400)))  # the segment is big enough: a new one, nothing read or rewritten
    lake.write(rows(range(400, 700)))
    assert [n.rsplit("-", 1)[1] for n in files(tmp_path)] == [f"{o:020d}.parquet" for o in (0, 140, 400)]
    ids = Counter(lake.read_table(columns=["event_id"]).column("event_id").to_pylist())
    assert len(ids) == 700 and set(ids.values()) == {1}


def test_a_fresh_writer_finds_the_segments_and_merges_a_replay_into_them(tmp_path):
    first = ParquetLakeWriter(str(tmp_path / "lake"), rows_per_file=1000, append_below=0)
    for lo in range(0, 600, 200):
        first.write(rows(range(lo, lo + 200)))
    assert len(files(tmp_path)) == 3
    restarted = ParquetLakeWriter(str(tmp_path / "lake"), rows_per_file=1000, append_below=0)
    restarted.write(rows(range(350, 450)))  # inside two segments: they become one
    restarted.write(rows(range(600, 650)))  # after them: a plain write
    names = [n.rsplit("-", 1)[1] for n in files(tmp_path)]
    assert names == [f"{o:020d}.parquet" for o in (0, 200, 600)]
    ids = Counter(restarted.read_table(columns=["event_id"]).column("event_id").to_pylist())
    assert len(ids) == 650 and set(ids.values()) == {1}


def test_segments_left_overlapping_by_a_crash_are_merged_by_the_replay(tmp_path):
    lake = ParquetLakeWriter(str(tmp_path / "lake"), rows_per_file=1000, append_below=0)
    for lo in range(0, 300, 100):
        lake.write(rows(range(lo, lo + 100)))
    # A merge of a replay of 150..250 put segment 100 (now 100..299) and crashed before deleting segment 200.
    window = f"{tmp_path}/lake/events/event_date=2026-12-03/{lake.window_name(lake_row(0))}"
    merged = pa.Table.from_pylist(rows(range(100, 300)), schema=LAKE_SCHEMA).drop_columns(["event_date"])
    lake._put(f"{window}-{100:020d}.parquet", merged)
    assert lake.read_table(columns=["event_id"]).num_rows == 400
    restarted = ParquetLakeWriter(str(tmp_path / "lake"), rows_per_file=1000, append_below=0)
    restarted.write(rows(range(120, 160)))  # the replay meets segment 100 only, and through it segment 200
    ids = Counter(restarted.read_table(columns=["event_id"]).column("event_id").to_pylist())
    assert len(ids) == 300 and set(ids.values()) == {1}
    assert [n.rsplit("-", 1)[1] for n in files(tmp_path)] == [f"{o:020d}.parquet" for o in (0, 100)]


def test_replayed_overlapping_and_misaligned_batches_store_every_event_once(lake, tmp_path):
    """A first run writes some batches of two Kafka partitions and crashes; the replay resumes in the middle of a
    written batch and cuts its batches elsewhere (across window edges); an older range is then replayed again."""
    events = {0: rows(range(0, 700)), 3: rows(range(0, 300), partition=3)}

    def run(start: dict[int, int], stop: dict[int, int], seed: int) -> None:
        rng, cut = random.Random(seed), dict(start)
        while any(cut[p] < stop[p] for p in cut):
            batch = []
            for p in cut:
                step = rng.randint(20, 170)
                batch += events[p][cut[p]:min(stop[p], cut[p] + step)]
                cut[p] = min(stop[p], cut[p] + step)
            lake.write(batch)

    run({0: 0, 3: 0}, {0: 410, 3: 170}, seed=1)    # killed here
    run({0: 201, 3: 64}, {0: 700, 3: 300}, seed=2)  # resumed from an older epoch, different batch edges
    lake.write(events[0][180:260] + events[3][250:300])  # and an older epoch once more
    table = lake.read_table(columns=["event_id", "kafka_partition", "kafka_offset"])
    ids = Counter(table.column("event_id").to_pylist())
    assert len(ids) == 1000 and set(ids.values()) == {1}
    assert ids.keys() == {r["event_id"] for p in events for r in events[p]}
    # Windows of 100 offsets (0..699 in partition 0, 0..299 in partition 3): a file never spans two.
    windows = Counter(n.rsplit("-", 1)[0] for n in files(tmp_path))
    assert len(windows) == 7 + 3


def test_a_replayed_row_replaces_its_older_copy(lake):
    lake.write(rows(range(10)))
    newer = lake_row(4)
    newer["plan_tier"] = "enterprise"
    lake.write([newer, newer])  # the same event twice in one batch is stored once too
    table = lake.read_table().to_pylist()
    assert len(table) == 10
    assert {r["kafka_offset"]: r["plan_tier"] for r in table}[4] == "enterprise"
    assert [r["kafka_offset"] for r in table] == list(range(10))


def test_rows_without_kafka_coordinates_are_refused_without_retries(lake):
    bad = lake_row(1)
    bad["kafka_offset"] = None
    assert not lake.retryable(ValueError("x"))
    with pytest.raises(SinkError, match="Kafka coordinates"):
        lake.write([bad])


def test_from_settings_local_and_s3(tmp_path):
    local = ParquetLakeWriter.from_settings(make_settings(tmp_path, HEADWATER_S3_URL=str(tmp_path / "l")))
    assert local.root == str(tmp_path / "l") and local.storage_options == {}
    s3 = ParquetLakeWriter.from_settings(make_settings(
        tmp_path, HEADWATER_S3_URL="s3://bucket/pre", HEADWATER_S3_ENDPOINT_URL="http://127.0.0.1:1",
        HEADWATER_S3_ACCESS_KEY_ID="ak", HEADWATER_S3_SECRET_ACCESS_KEY="sk"), rows_per_file=10)
    opts = s3.storage_options
    assert (opts["endpoint_url"], opts["key"], opts["secret"]) == ("http://127.0.0.1:1", "ak", "sk")
    assert s3.rows_per_file == 10 and "sk" not in repr(s3.__dict__.get("root"))
