"""``headwater bench {gateway,flow,sinks,e2e,all}``: run the benchmarks, write the results and the chart.

Register it with :func:`add_parser`. Each part calls the benchmark scripts' ``main([...])`` and keeps the dict they
return; :mod:`bench.report` turns those into the table (``latest.md``), the chart (``latest.png``) and the JSON.

- gateway: ``bench_gateway`` (the gateway against a bare read-and-produce ceiling), ``--runs`` times;
- flow: per run, ``bench_flow`` (full flow and bare Bytewax) then ``bench_quix`` (the same pipeline and a bare
  pass-through in quixstreams) on the same broker with the same records, side by side, with the peak RSS of every
  child process sampled the same way;
- sinks: ``bench_sinks`` (ClickHouse, Snowflake) ``--runs`` times and ``bench_lake`` (Parquet on moto S3);
- e2e: ``bench_e2e`` (gateway accept → visible per sink, p50/p95/p99), ``--runs`` measured windows.

Sizes are chosen so that ``all`` finishes within ten minutes on a 2-core machine; ``--quick`` makes them small
enough for a smoke run. Exit status 0 when every part ran (targets missed are reported, not an error), 1 when a
part failed, 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
PARTS = ("gateway", "flow", "sinks", "e2e")

#: Per-part sizes: ``full`` keeps ``bench all --runs 3`` under ten minutes here, ``quick`` is a smoke run.
SIZES: dict[str, dict[str, Any]] = {
    "full": {"gateway": ["--duration", "2", "--loads", "0.5", "--max-rps-guess", "1200"],
             "flow_events": 40_000, "sink_batch": 20_000, "lake_rows": 40_000,
             "e2e": ["--rate", "1000", "--duration", "10"]},
    "quick": {"gateway": ["--duration", "1", "--loads", "0.5", "--max-rps-guess", "1200"],
              "flow_events": 5_000, "sink_batch": 2_000, "lake_rows": 4_000,
              "e2e": ["--rate", "500", "--duration", "4", "--drain-timeout", "30"]},
}


def bytewax_label(cmdline: str) -> str | None:
    """Peak-memory label of a ``bench_flow`` child (``None``: not one)."""
    if "bytewax.run" not in cmdline:
        return None
    if "bare_flow(" in cmdline:
        return "bytewax_bare"
    return "bytewax_full" if "full_flow(" in cmdline else None


def run_gateway(runs: int, sizes: dict[str, Any], say: Callable[[str], None]) -> list[dict[str, Any]]:
    from bench import bench_gateway

    results = []
    for run in range(1, runs + 1):
        say(f"[gateway] run {run}/{runs}: gateway, then the bare ceiling")
        results.append(bench_gateway.main(sizes["gateway"]))
    return results


def run_flow(runs: int, sizes: dict[str, Any], say: Callable[[str], None]) -> dict[str, Any]:
    from bench import bench_flow, bench_quix

    events = str(sizes["flow_events"])
    bytewax, quix = [], []
    watcher = bench_quix.PeakRss(lambda cmd: bytewax_label(cmd) or bench_quix.quix_label(cmd))
    with watcher:
        for run in range(1, runs + 1):
            verify = [] if run == 1 else ["--no-verify"]
            say(f"[flow] run {run}/{runs}: Bytewax bare and full, {int(events):,} events")
            bytewax.append(bench_flow.main(["--events", events, "--runs", "1", *verify]))
            say(f"[flow] run {run}/{runs}: quixstreams bare and full, the same {int(events):,} events")
            quix.append(bench_quix.main(["--events", events, "--runs", "1", *verify]))
    return {"events": int(events), "bytewax": bytewax, "quix": quix, "memory": watcher.peaks()}


def run_sinks(runs: int, sizes: dict[str, Any], say: Callable[[str], None]) -> dict[str, Any]:
    from bench import bench_lake, bench_sinks

    batch = sizes["sink_batch"]
    warehouses = []
    for run in range(1, runs + 1):
        say(f"[sinks] run {run}/{runs}: ClickHouse and Snowflake, {batch:,}-row batch")
        warehouses.append(bench_sinks.main(["--sizes", str(batch), "--runs", "1"]))
    say(f"[sinks] lake: {sizes['lake_rows']:,} rows in {batch:,}-row batches, {runs} runs")
    lake = bench_lake.main(["--rows", str(sizes["lake_rows"]), "--batches", str(batch), "--runs", str(runs)])
    return {"batch": batch, "lake_batch": batch, "warehouses": warehouses, "lake": lake}


def run_e2e(runs: int, sizes: dict[str, Any], say: Callable[[str], None]) -> dict[str, Any]:
    from bench import bench_e2e

    say(f"[e2e] gateway + flow + three sinks, {runs} measured windows ({' '.join(sizes['e2e'])})")
    return bench_e2e.main([*sizes["e2e"], "--runs", str(runs)])


RUNNERS: dict[str, Callable[[int, dict[str, Any], Callable[[str], None]], Any]] = {
    "gateway": run_gateway, "flow": run_flow, "sinks": run_sinks, "e2e": run_e2e}


def run(command: str, runs: int, quick: bool, out: Path, as_json: bool) -> int:
    """Run ``command`` (a part or ``all``), write the results into ``out``, print where they are."""
    from bench import report

    progress = sys.stderr if as_json else sys.stdout

    def say(text: str) -> None:
        print(f"{dt.datetime.now():%H:%M:%S} {text}", file=progress, flush=True)

    sizes = SIZES["quick" if quick else "full"]
    parts, errors = {}, {}
    started_at = dt.datetime.now(dt.timezone.utc)
    clock = time.monotonic()
    for part in PARTS if command == "all" else (command,):
        part_clock = time.monotonic()
        say(f"[{part}] starting")
        try:
            # The scripts print their own progress on stdout; with --json, stdout carries only the result.
            with contextlib.redirect_stdout(progress):
                parts[part] = RUNNERS[part](runs, sizes, say)
        except Exception as exc:  # one part failing must not lose the others' figures
            errors[part] = f"{type(exc).__name__}: {exc}"
            say(f"[{part}] FAILED: {errors[part]}")
            traceback.print_exc(file=progress)
        else:
            say(f"[{part}] done in {time.monotonic() - part_clock:.0f} s")
    result = report.build_result(command, parts, errors, started_at, time.monotonic() - clock, runs, quick)
    paths = report.write(result, out)
    if as_json:
        print(json.dumps(result, default=str))
    else:
        print()
        print(report.markdown(result))
        print("written: " + ", ".join(str(p) for p in paths.values()))
    return EXIT_FAIL if errors else EXIT_OK


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.runs < 1:
        print("bench: --runs must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    return run(args.part, args.runs, args.quick, Path(args.out), args.json)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench`` to the ``headwater`` command."""
    from bench.report import DEFAULT_OUT

    p = subparsers.add_parser(
        "bench", help="run the benchmarks (gateway, flow vs Bytewax and quixstreams, sinks, end to end)",
        description="Run the benchmarks against the devstack (headwater devstack up) and write "
                    "bench/results/<timestamp>.json, latest.md (a table with targets and ratios) and latest.png. "
                    "The flow part needs .venv-quix for the quixstreams peer. Figures are medians of --runs runs; "
                    "ratios are measured side by side in the same run.")
    p.add_argument("part", choices=(*PARTS, "all"), help="what to measure; all = every part (under 10 minutes)")
    p.add_argument("--runs", type=int, default=3, help="runs per figure (default 3)")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    p.add_argument("--out", default=str(DEFAULT_OUT), help=f"results directory (default {DEFAULT_OUT})")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON on stdout (progress on stderr)")
    p.set_defaults(func=_cmd_bench)
