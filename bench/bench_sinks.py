"""Write throughput of the ClickHouse and Snowflake sinks on the devstack.

Usage::

    python bench/bench_sinks.py [--sizes 5000,20000] [--runs 3] [--json]

Each run writes a batch of fresh events through ``BatchWriter.write`` (retries and metrics included) into a
scratch database/schema (ClickHouse ``headwater_bench`` on the server, Snowflake ``ANALYTICS.HEADWATER_BENCH``),
dropped afterwards. Connection set-up and table creation happen before the clock starts. Reported: the median
rows/s per sink and batch size (wall clock), and the median rows per second of this process's CPU time
(``client_cpu_rows_per_second``: the writer's own Python-side cost, which is what the flow's worker pays; the wall
clock also holds the server's time and, on a shared machine, everyone else's load). ``main(argv)`` returns the
figures as a dict, for ``headwater bench``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from headwater.devstack import Devstack  # noqa: E402
from sinks.clickhouse import ClickHouseWriter  # noqa: E402
from sinks.snowflake import SnowflakeWriter  # noqa: E402
from tests.sinkrows import make_rows  # noqa: E402


def _median_rates(writer: Any, size: int, runs: int, offset: int) -> tuple[float, float]:
    """Median rows/s over ``runs`` batches of ``size``: by wall clock, and by this process's CPU time."""
    wall, cpu = [], []
    for run in range(runs):
        rows = make_rows(0, size, salt=f"bench-{offset}-{run}-")
        started, started_cpu = time.perf_counter(), time.process_time()
        writer.write(rows)
        wall.append(size / (time.perf_counter() - started))
        cpu.append(size / max(time.process_time() - started_cpu, 1e-9))
    return statistics.median(wall), statistics.median(cpu)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,20000", help="batch sizes, comma-separated")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    stack = Devstack()
    stack.up(["clickhouse", "snowflake"])
    ch = ClickHouseWriter(f"clickhouse://127.0.0.1:{stack.ports['clickhouse']}/headwater_bench")
    sf = SnowflakeWriter(f"snowflake://headwater@fakesnow/ANALYTICS/HEADWATER_BENCH?host=127.0.0.1"
                         f"&port={stack.ports['snowflake']}&protocol=http", password="fakesnow")
    results: dict[str, Any] = {"runs": args.runs, "rows_per_second": {}, "client_cpu_rows_per_second": {}}
    try:
        for name, writer in (("clickhouse", ch), ("snowflake", sf)):
            writer.write(make_rows(0, 10, salt="warm-up-"))
            rates = {str(size): _median_rates(writer, size, args.runs, size) for size in sizes}
            results["rows_per_second"][name] = {size: round(r[0]) for size, r in rates.items()}
            results["client_cpu_rows_per_second"][name] = {size: round(r[1]) for size, r in rates.items()}
    finally:
        ch.query("DROP DATABASE IF EXISTS headwater_bench")
        ch.close()
        for table in ("EVENTS", "EVENTS_STAGING"):
            sf.query(f"DROP TABLE IF EXISTS ANALYTICS.HEADWATER_BENCH.{table}")
        sf.query("DROP SCHEMA IF EXISTS ANALYTICS.HEADWATER_BENCH")
        sf.close()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for name, by_size in results["rows_per_second"].items():
            for size, rate in by_size.items():
                cpu = results["client_cpu_rows_per_second"][name][size]
                print(f"{name:<11} batch {int(size):>6}: {rate:>10,} rows/s, {cpu:>10,} rows per client CPU-second "
                      f"(median of {args.runs})")
    return results


if __name__ == "__main__":
    main()
