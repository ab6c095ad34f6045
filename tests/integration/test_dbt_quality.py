"""The dbt project (dbt/) on its DuckDB target: a lake written by the real ParquetLakeWriter in a local directory,
an accounts snapshot as CSV, ``dbt build`` through the separate ``.venv-dbt``. A clean lake builds; a duplicate,
a missing field, a wrong plan tier and a count that disagrees with another store each fail the test that owns it.

Needs ``.venv-dbt`` (``python3.11 -m venv .venv-dbt && .venv-dbt/bin/python -m pip install -r dbt/requirements.txt``);
skipped with that hint when it is absent. No devstack service is used."""
from __future__ import annotations

import csv
import datetime as dt
import json
import os
import subprocess
from pathlib import Path
import pytest

from sinks.s3_parquet import ParquetLakeWriter
from tests.sinkrows import make_row

REPO = Path(__file__).resolve().parents[2]
DBT = REPO / ".venv-dbt" / "bin" / "dbt"
PROJECT = REPO / "dbt"
DAY = dt.date(2026, 12, 3)
N_ROWS = 60
TIERS = ("free", "pro", "enterprise")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not DBT.exists(), reason=f"{DBT.relative_to(REPO)} is absent: create it with "
                                                "'python3.11 -m venv .venv-dbt && .venv-dbt/bin/python -m pip "
                                                "install -r dbt/requirements.txt'"),
]


def _tier(user: int) -> str | None:
    return None if user % 7 == 0 else TIERS[user % 3]


@pytest.fixture()
def lake(tmp_path):
    rows = []
    for n in range(N_ROWS):
        user = n % 20
        user_id = None if n % 5 == 0 else f"u{user:04d}"
        tier = "anonymous" if user_id is None else (_tier(user) or "unknown")
        rows.append(make_row(n, "dbt", user_id=user_id, plan_tier=tier))
    writer = ParquetLakeWriter(str(tmp_path / "lake"))
    writer.write(rows)
    with open(tmp_path / "accounts.csv", "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["user_id", "plan_tier", "updated_at"])
        out.writerows([f"u{i:04d}", _tier(i), "2026-01-01T00:00:00+00:00"] for i in range(20) if _tier(i))
    yield writer, rows, tmp_path
    writer.close()


def _build(tmp_path: Path, *extra: str) -> tuple[int, dict[str, str], str]:
    """Run ``dbt build`` on the lake target; return the exit code, {test name: status} and the output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBT_", "HEADWATER_"))}
    env.update({
        "HEADWATER_LAKE_DIR": str(tmp_path / "lake"), "HEADWATER_ACCOUNTS_CSV": str(tmp_path / "accounts.csv"),
        "HEADWATER_DBT_DUCKDB_PATH": str(tmp_path / "quality.duckdb"), "DBT_TARGET": "lake",
        # Keep the run's files out of the repository and away from other runs; no usage statistics (no network).
        "DBT_TARGET_PATH": str(tmp_path / "target"), "DBT_LOG_PATH": str(tmp_path / "logs"),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false", "DBT_USE_COLORS": "false",
    })
    proc = subprocess.run([str(DBT), "build", "--project-dir", str(PROJECT), "--profiles-dir", str(PROJECT),
                           *extra], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    output = proc.stdout + proc.stderr
    results_file = tmp_path / "target" / "run_results.json"
    assert results_file.exists(), output
    results = json.loads(results_file.read_text())["results"]
    return proc.returncode, {r["unique_id"].split(".")[2]: r["status"] for r in results}, output


def _failed(statuses: dict[str, str]) -> set[str]:
    return {name for name, status in statuses.items() if status in ("fail", "error")}


def test_clean_lake_builds_then_planted_faults_fail_their_tests(lake):
    writer, rows, tmp_path = lake
    code, statuses, output = _build(tmp_path, "--vars", json.dumps({"expected_counts": {DAY.isoformat(): N_ROWS}}))
    assert code == 0, output
    assert _failed(statuses) == set() and len(statuses) >= 20, statuses
    assert statuses["event_counts_per_date"] == "pass" and statuses["source_unique_headwater_events_event_id"] == "pass"

    dup, empty, wrong = rows[1], rows[2], next(r for r in rows if r["plan_tier"] == "free")
    writer.write([{**dup, "kafka_offset": dup["kafka_offset"] + 50_000},  # another offset window: a second copy
                  {**empty, "pii_salt_id": None},                         # replaces itself without pii_salt_id
                  {**wrong, "plan_tier": "enterprise"}])                  # the account says free since January
    code, statuses, output = _build(tmp_path)
    assert code == 1
    assert _failed(statuses) == {"source_unique_headwater_events_event_id",
                                 "source_not_null_headwater_events_pii_salt_id",
                                 "event_counts_per_date", "plan_tier_matches_accounts"}, statuses
    assert "Failure in test source_unique_headwater_events_event_id" in output
    assert "Failure in test plan_tier_matches_accounts" in output


def test_a_count_that_disagrees_with_another_store_fails(lake):
    _, _, tmp_path = lake
    code, statuses, output = _build(tmp_path, "--select", "event_counts_per_date",
                                    "--vars", json.dumps({"expected_counts": {DAY.isoformat(): N_ROWS + 1}}))
    assert code == 1 and statuses == {"event_counts_per_date": "fail"}, output


def test_an_unknown_user_with_a_tier_and_a_recent_change(lake):
    writer, rows, tmp_path = lake
    ghost = next(r for r in rows if r["plan_tier"] == "unknown")
    writer.write([{**ghost, "plan_tier": "pro"}])  # no account, yet a tier: breaks the relationship
    changed = next(r for r in rows if r["plan_tier"] == "pro")["user_id"]
    lines = (tmp_path / "accounts.csv").read_text().splitlines()
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    (tmp_path / "accounts.csv").write_text("\n".join(
        f"{changed},enterprise,{now}" if line.startswith(f"{changed},") else line for line in lines) + "\n")
    code, statuses, output = _build(tmp_path)
    assert code == 1
    relationship = "source_relationships_headwater_events_user_id__user_id__source_oltp_accounts_"
    assert _failed(statuses) == {relationship}, statuses
    assert statuses["plan_tier_changed_since_event"] == "warn", output
