"""``headwater bench e2e --quick`` end to end: the real gateway, flow and three sinks on the devstack, and the files
the command writes."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration


def test_bench_e2e_quick_measures_every_sink_and_writes_the_results(devstack, tmp_path):
    out = tmp_path / "results"
    done = subprocess.run([sys.executable, "-m", "bench", "e2e", "--quick", "--runs", "1", "--out", str(out),
                           "--json"], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["errors"] == {}
    assert "[e2e] done" in done.stderr  # progress goes to stderr when stdout carries the JSON

    run = result["parts"]["e2e"]["runs"][0]
    assert run["request_errors"] == 0 and run["accepted_events"] > 0
    for sink in ("clickhouse", "snowflake", "lake"):
        stats = run["sinks"][sink]
        assert stats["missing"] == 0, (sink, stats)
        assert stats["events"] == run["accepted_events"]
        assert 0 < stats["p50_s"] <= stats["p95_s"] <= stats["p99_s"] <= stats["max_s"] < 60

    figures = {f["name"]: f for f in result["figures"]}
    p95 = figures["accept → visible in clickhouse, p95"]
    assert p95["median"] == run["sinks"]["clickhouse"]["p95_s"]
    assert p95["target"] == {"op": "<", "value": 3.0, "on": "median"}
    assert figures["accepted events never visible in lake"]["passed"] is True

    markdown = (out / "latest.md").read_text()
    assert "| e2e: accept → visible in clickhouse, p95 |" in markdown
    assert (out / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = list(out.glob("*.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["figures"] == result["figures"]


def test_bench_refuses_an_unknown_part():
    done = subprocess.run([sys.executable, "-m", "bench", "nothing"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "invalid choice" in done.stderr
