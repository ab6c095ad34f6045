"""The table, chart and JSON that ``headwater bench`` writes, from results shaped like the scripts' own."""
from __future__ import annotations

import datetime as dt
import json
import struct
import zlib

import pytest

from bench import report
from bench.bench_e2e import percentile
from bench.bench_quix import quix_label
from bench.cli import bytewax_label

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _gateway(per_core: float, bare: float) -> dict:
    return {"summary": {"gateway_events_per_core": per_core, "gateway_max_events_per_s": per_core / 2,
                        "gateway_p99_ms_at_half_load": 40.0, "bare_events_per_core": bare,
                        "gateway_vs_bare_per_core": per_core / bare}}


def _pair(bare: float, full: float) -> dict:
    return {"events": 1000, "bare": [bare], "full": [full], "ratios": [full / bare],
            "median_bare": bare, "median_full": full, "median_ratio": full / bare,
            "bare_cpu_us": [1e6 / bare], "full_cpu_us": [1e6 / full]}


def _e2e_run(p95_clickhouse: float, missing: int = 0) -> dict:
    sinks = {}
    for sink, p95 in (("clickhouse", p95_clickhouse), ("snowflake", 4.0), ("lake", 2.0)):
        sinks[sink] = {"events": 500, "missing": missing if sink == "clickhouse" else 0, "p50_s": p95 / 2,
                       "p95_s": p95, "p99_s": p95 + 0.5, "max_s": p95 + 1, "median_poll_s": 0.05}
    return {"accepted_events": 500, "sinks": sinks}


@pytest.fixture
def parts() -> dict:
    return {
        "gateway": [_gateway(20_000, 400_000), _gateway(30_000, 500_000), _gateway(25_000, 250_000)],
        "flow": {
            "events": 1000,
            "bytewax": [_pair(80_000, 20_000), _pair(90_000, 45_000), _pair(70_000, 21_000)],
            "quix": [_pair(40_000, 10_000), _pair(30_000, 15_000), _pair(35_000, 14_000)],
            "memory": {"bytewax_full": [150.0, 160.0, 155.0], "bytewax_bare": [90.0, 91.0, 92.0],
                       "quix_full": [140.0, 150.0, 145.0], "quix_bare": [100.0, 100.0, 100.0]},
        },
        "sinks": {"batch": 20_000, "lake_batch": 20_000,
                  "warehouses": [{"rows_per_second": {"clickhouse": {"20000": v}, "snowflake": {"20000": v // 2}},
                                  "client_cpu_rows_per_second": {"clickhouse": {"20000": 2 * v},
                                                                 "snowflake": {"20000": v}}}
                                 for v in (40_000, 50_000, 60_000)],
                  "lake": {"lake": {"20000": {"write": [30_000.0, 35_000.0, 32_000.0],
                                              "replay": [20_000.0, 22_000.0, 21_000.0]}}}},
        "e2e": {"runs": [_e2e_run(2.0), _e2e_run(2.5), _e2e_run(3.5)]},
    }


def _result(parts: dict, errors: dict | None = None) -> dict:
    started = dt.datetime(2026, 12, 3, 12, 0, 0, tzinfo=dt.timezone.utc)
    return report.build_result("all", parts, errors or {}, started, 321.0, 3, False)


def _row(markdown: str, figure: str) -> list[str]:
    for line in markdown.splitlines():
        if line.startswith(f"| {figure} |"):
            return [cell.strip() for cell in line.strip("|").split("|")]
    raise AssertionError(f"no row for {figure!r} in:\n{markdown}")


def test_markdown_has_a_row_per_figure_with_medians_ratios_and_verdicts(parts):
    md = report.markdown(_result(parts))

    gateway = _row(md, "gateway: gateway accepted events/s per core")
    assert gateway[1] == "25,000 events/s"            # median of 20k, 30k, 25k
    assert gateway[2] == "20,000, 30,000, 25,000"
    assert gateway[3] == "≥ 50,000 events/s"
    assert gateway[4] == "0.06 × bare ceiling per core"  # median of 0.05, 0.06, 0.1
    assert gateway[5] == "**fail**"

    full = _row(md, "flow: full flow, Bytewax")
    assert full[1] == "21,000 events/s"
    assert full[3] == "ratio ≥ 0.50×"
    assert full[4] == "0.30 × bare Bytewax"            # median of 0.25, 0.5, 0.3
    assert full[5] == "**fail**"                       # target is ratio ≥ 0.5

    versus = _row(md, "flow: full flow Bytewax / full flow quixstreams")
    assert versus[2] == "2.00, 3.00, 1.50"                # per run, side by side
    assert versus[1] == "2.00×" and versus[5] == "pass"

    cpu = _row(md, "flow: CPU per event, quixstreams full / Bytewax full")
    assert cpu[2] == "2.00, 3.00, 1.50" and cpu[1] == "2.00×"
    assert _row(md, "flow: CPU per event, full flow, Bytewax")[1] == "47.6 µs"  # 1e6 / 21,000

    memory = _row(md, "flow: peak RSS, full flow, Bytewax")
    assert memory[1] == "155.0 MiB" and memory[4] == "1.07 × quixstreams full"

    assert _row(md, "sinks: ClickHouse rows/s, 20,000-row batches")[1] == "50,000 rows/s"
    assert _row(md, "sinks: lake rows/s, replay after a restart")[1] == "21,000 rows/s"
    assert _row(md, "sinks: ClickHouse rows per client CPU-second")[1] == "100,000 rows/s"

    p95 = _row(md, "e2e: accept → visible in clickhouse, p95")
    assert p95[1] == "2.50 s" and p95[3] == "< 3.00 s" and p95[5] == "pass"
    assert _row(md, "e2e: accepted events never visible in clickhouse")[5] == "pass"


def test_markdown_describes_the_machine_and_lists_failed_parts(parts):
    del parts["e2e"]
    md = report.markdown(_result(parts, {"e2e": "RuntimeError: flow exited with 1"}))
    assert "cores" in md and "Python" in md and "bytewax" in md
    assert "wall time 321 s" in md
    assert "- e2e: RuntimeError: flow exited with 1" in md
    assert "e2e: accept" not in md


def test_lost_events_and_a_slow_p95_fail(parts):
    parts["e2e"] = {"runs": [_e2e_run(3.5, missing=4), _e2e_run(3.2)]}
    md = report.markdown(_result(parts))
    assert _row(md, "e2e: accept → visible in clickhouse, p95")[5] == "**fail**"
    lost = _row(md, "e2e: accepted events never visible in clickhouse")
    assert lost[1] == "2 events" and lost[5] == "**fail**"


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    crc = struct.unpack(">I", data[29:33])[0]
    assert crc == zlib.crc32(data[12:29])
    return struct.unpack(">II", data[16:24])


def test_write_puts_json_markdown_and_a_valid_png_in_the_directory(parts, tmp_path):
    paths = report.write(_result(parts), tmp_path)
    assert paths["json"].name == "20261203T120000Z.json"
    saved = json.loads(paths["json"].read_text())
    assert saved["parts"]["flow"]["events"] == 1000
    assert {f["part"] for f in saved["figures"]} == {"gateway", "flow", "sinks", "e2e"}
    assert paths["markdown"].read_text() == report.markdown(saved)
    width, height = _png_size(paths["png"].read_bytes())
    assert width > 600 and height > 400

    from matplotlib.image import imread

    pixels = imread(paths["png"])
    assert pixels.shape[:2] == (height, width)
    assert pixels.std() > 0  # something was drawn


def test_a_partial_run_still_plots(tmp_path):
    result = _result({"sinks": {"batch": 2000, "lake_batch": 2000, "warehouses": [], "lake": {}}})
    path = report.plot(result, tmp_path / "x.png")
    _png_size(path.read_bytes())


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert percentile(values, 0.50) == 50
    assert percentile(values, 0.95) == 95
    assert percentile(values, 0.99) == 99
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) is None


def test_child_processes_are_labelled_for_peak_memory():
    assert bytewax_label("python -m bytewax.run bench.bench_flow:bare_flow('t', 'o', [1], 'f')") == "bytewax_bare"
    assert bytewax_label("python -m bytewax.run bench.bench_flow:full_flow('t', 'o', 'i', [1], 'f', 'x')") == \
        "bytewax_full"
    assert bytewax_label("python -m headwater gateway") is None
    assert quix_label(".venv-quix/bin/python -m bench.bench_quix _child --mode full --brokers b") == "quix_full"
    assert quix_label(".venv-quix/bin/python -m bench.bench_quix _child --mode bare --brokers b") == "quix_bare"
    assert quix_label("python -m bench.bench_quix --events 10") is None
