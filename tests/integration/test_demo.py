"""``headwater demo`` as a newcomer runs it: its own broker, gateway, flow, local lake, chdb and fakesnow, on free
ports under a temporary work directory. The summary must agree with the sinks, and nothing may be left running;
with ``--keep-running`` the pipeline stays up for other commands (``headwater smoke``) until ``--stop``."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    # The demo must not need any HEADWATER_* setting from the caller's environment.
    return {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}


def _demo(workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "headwater", "demo", "--workdir", str(workdir), "--users", "25",
                           "--server-events", "40", *extra], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=400)


def _stack_pids(workdir: Path) -> list[int]:
    pids = []
    for pidfile in (workdir / "stack").glob("*.pid"):
        pid = int(pidfile.read_text().split()[0])
        if Path(f"/proc/{pid}").exists():
            pids.append(pid)
    return pids


def test_demo_summary_matches_the_sinks_and_nothing_is_left_running(tmp_path):
    workdir = tmp_path / "demo"
    run = _demo(workdir)
    out = run.stdout
    assert run.returncode == 0, out[-4000:] + run.stderr[-3000:]
    expected = int(re.search(r"expected (\d+) events in each", out).group(1))
    accepted = int(re.search(r"gateway\s+accepted (\d+)", out).group(1))
    assert expected == accepted > 300
    for sink in ("lake", "clickhouse", "snowflake"):
        line = re.search(rf"^  {sink}\s+rows\s+(\d+)\s+distinct event ids\s+(\d+)\s+(\S+)$", out, re.M)
        assert line, f"no count line for {sink}:\n{out[-3000:]}"
        assert (int(line.group(1)), int(line.group(2)), line.group(3)) == (expected, expected, "ok")
    rejected = int(re.search(r"rejected (\d+)", out).group(1))
    assert rejected > 0 and "rejected at the gateway" in out
    assert re.search(r"dead letters on analytics\.events\.invalid: 3\b", out)
    assert "found in the lake or the logs: 0" in out
    assert re.search(r"duplicate [1-9]", out), "the simulated re-sends must show as duplicates"

    # Cross-check one sink independently of the demo's own reader: the lake's Parquet files.
    import pyarrow.dataset as ds

    table = ds.dataset(workdir / "lake" / "events", format="parquet", partitioning="hive").to_table(
        columns=["event_id"])
    assert table.num_rows == expected == len(table.column("event_id").unique())
    assert _stack_pids(workdir) == []
    for log in ("gateway", "flow"):
        assert (workdir / "logs" / f"{log}.log").exists()


def test_keep_running_then_smoke_then_stop(tmp_path):
    workdir = tmp_path / "demo"
    run = _demo(workdir, "--keep-running")
    try:
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-3000:]
        url = re.search(r"Gateway (http://127\.0\.0\.1:\d+)", run.stdout).group(1)
        with urllib.request.urlopen(url + "/healthz", timeout=5) as resp:
            assert resp.status == 200
        env = _env()
        for line in (workdir / "demo.env").read_text().splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = shlex.split(value)[0]
        assert oct((workdir / "demo.env").stat().st_mode & 0o777) == "0o600"
        smoke = subprocess.run([sys.executable, "-m", "headwater", "smoke", "--url", url, "--sinks", "lake,snowflake",
                                "--timeout", "60"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert smoke.returncode == 0, smoke.stdout + smoke.stderr
        assert "OK canary reached lake, snowflake" in smoke.stdout
    finally:
        stop = subprocess.run([sys.executable, "-m", "headwater", "demo", "--stop", "--workdir", str(workdir)],
                              cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert _stack_pids(workdir) == []
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/healthz", timeout=3)
