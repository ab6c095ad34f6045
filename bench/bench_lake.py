"""Write throughput of the lake sink (``ParquetLakeWriter`` on the devstack's moto S3).

Usage::

    python bench/bench_lake.py [--rows N] [--batches 5000,20000] [--runs R] [--rows-per-file W] [--json]

What it measures, per batch size: ``N`` flow-shaped rows (four Kafka partitions, realistic JSON properties)
written through ``BatchWriter.write`` into a fresh prefix, a batch at a time, as the flow's sink adapter hands
them over. Lake objects are segments of Kafka offset windows (see :mod:`sinks.s3_parquet`): rows after what a
window holds are a plain write of a new segment, and a small segment just written is extended instead, so the
figure includes that (bounded) rewriting. A second figure, ``replay``, rewrites the same rows with batches cut
elsewhere by a fresh writer (what a restart costs: the segments a replayed batch meets are read back and merged).
Rates are rows per second of wall-clock time; the machine is shared, so look at the median of ``--runs``.
``cpu_write`` is rows per second of this process's CPU time (the writer's own cost, without moto's and other
processes' share of the machine). ``main(argv)`` returns the figures as a dict; :func:`bench_lake` is the reusable
part (``bench_sinks.py`` measures ClickHouse and Snowflake).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sinks.base import ROW_COLUMNS  # noqa: E402

PARTITIONS = 4
_START = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.timezone.utc)


def make_rows(n: int, seed: int = 1) -> list[dict[str, Any]]:
    """``n`` output rows spread round-robin over the Kafka partitions, offsets increasing per partition."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        received = _START + dt.timedelta(milliseconds=i)
        row = dict.fromkeys(ROW_COLUMNS)
        row.update({
            "event_id": str(uuid.UUID(int=rng.getrandbits(128))), "event": rng.choice(("page_viewed", "identify")),
            "event_date": received.date(), "timestamp": received - dt.timedelta(seconds=1), "received_at": received,
            "user_id": f"user-{rng.randrange(5000)}", "pii_salt_id": "2026Q4", "country": "DE", "region": "BE",
            "city": "Berlin", "latitude": 52.52, "longitude": 13.405, "time_zone": "Europe/Berlin",
            "ip_truncated": "81.2.69.0", "plan_tier": rng.choice(("free", "pro", "enterprise")),
            "browser": "Firefox", "os": "Linux", "device_class": "desktop",
            "properties": json.dumps({"url": f"https://acme.example/p/{rng.randrange(10**6)}", "path": "/p",
                                      "referrer": "https://search.example/", "value": rng.random()}),
            "context": json.dumps({"locale": "de-DE", "page": {"title": "Pricing"}}), "consent": None,
            "source": "http", "schema_version": 1, "clock_skew_seconds": 0.5,
            "kafka_topic": "bench.raw", "kafka_partition": i % PARTITIONS, "kafka_offset": i // PARTITIONS,
        })
        rows.append(row)
    return rows


def _write_all(writer: Any, rows: list[dict[str, Any]], batch: int, first_cut: int = 0) -> tuple[float, float]:
    """Write ``rows`` a batch at a time; return the wall-clock and CPU seconds it took."""
    started, started_cpu = time.perf_counter(), time.process_time()
    edges = [0] + list(range(first_cut or batch, len(rows), batch)) + [len(rows)]
    for lo, hi in zip(edges, edges[1:]):
        if hi > lo:
            writer.write(rows[lo:hi])
    return time.perf_counter() - started, max(time.process_time() - started_cpu, 1e-9)


def bench_lake(settings: Any, rows: list[dict[str, Any]], batch_sizes: Sequence[int], runs: int,
               rows_per_file: int | None = None, say: Callable[..., None] = print) -> dict[str, Any]:
    """Lake write rates on the S3 of ``settings``:
    ``{"rows", "rows_per_file", "<batch>": {"write": [...], "replay": [...], "median_write", "median_replay",
    "cpu_write": [...], "median_cpu_write"}}``."""
    from sinks.s3_parquet import DEFAULT_ROWS_PER_FILE, ParquetLakeWriter

    window = rows_per_file or DEFAULT_ROWS_PER_FILE
    results: dict[str, Any] = {"rows": len(rows), "rows_per_file": window}
    base = settings.s3_url.rstrip("/")
    for batch in batch_sizes:
        writes, replays, cpu_writes = [], [], []
        for run in range(runs):
            lake = settings.model_copy(update={"s3_url": f"{base}/bench-{uuid.uuid4().hex[:10]}"})
            writer = ParquetLakeWriter.from_settings(lake, rows_per_file=window)
            wall, cpu = _write_all(writer, rows, batch)
            writes.append(len(rows) / wall)
            cpu_writes.append(len(rows) / cpu)
            writer.close()
            replayer = ParquetLakeWriter.from_settings(lake, rows_per_file=window)  # a restart: nothing cached
            replays.append(len(rows) / _write_all(replayer, rows, batch, first_cut=batch // 3)[0])
            stored = replayer.read_table(columns=["event_id"]).num_rows
            if stored != len(rows):
                raise AssertionError(f"lake holds {stored} rows, expected {len(rows)}")
            replayer.filesystem.rm(lake.s3_url.removeprefix("s3://"), recursive=True)
            replayer.close()
            say(f"lake batch={batch:>6}: run {run + 1}: write {writes[-1]:>9,.0f} rows/s "
                f"({cpu_writes[-1]:>9,.0f} per CPU-second), replay {replays[-1]:>9,.0f} rows/s")
        results[str(batch)] = {"write": writes, "replay": replays, "median_write": statistics.median(writes),
                               "median_replay": statistics.median(replays), "cpu_write": cpu_writes,
                               "median_cpu_write": statistics.median(cpu_writes)}
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark.

    :param argv: command-line arguments without the program name (``None``: ``sys.argv[1:]``)
    :returns: ``{"lake": bench_lake(...)}`` (rates in rows/s)
    """
    parser = argparse.ArgumentParser(prog="bench_lake", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows per run (default 100000)")
    parser.add_argument("--batches", default="5000,20000", help="batch sizes, comma-separated")
    parser.add_argument("--runs", type=int, default=3, help="runs per batch size (default 3)")
    parser.add_argument("--rows-per-file", type=int, default=None, help="lake offset window (default: writer's)")
    parser.add_argument("--json", action="store_true", help="print only the result as JSON")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    if args.rows < 1 or args.runs < 1 or not batches or min(batches) < 1:
        parser.error("--rows, --runs and the batch sizes must be positive")
    say = (lambda *a: None) if args.json else print

    from headwater.settings import load_settings

    env = {"HEADWATER_S3_URL": "s3://headwater-lake", "HEADWATER_S3_ENDPOINT_URL": "http://127.0.0.1:29000",
           "HEADWATER_S3_ACCESS_KEY_ID": "testing", "HEADWATER_S3_SECRET_ACCESS_KEY": "testing"}
    env.update({k: v for k, v in os.environ.items() if k.startswith("HEADWATER_S3_")})
    result = {"lake": bench_lake(load_settings(env), make_rows(args.rows), batches, args.runs,
                                 args.rows_per_file, say)}
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
