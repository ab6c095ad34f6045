"""The report's text and JSON forms, built from check results directly (no stores involved)."""
from __future__ import annotations

import datetime as dt
import json

from quality.checks import FAIL, INFO, PASS, SKIP, WARN, CheckResult, Finding, QualityReport
from quality.report import render_json, render_text, report_dict

DAY = dt.date(2026, 12, 3)


def _report(*checks: CheckResult) -> QualityReport:
    return QualityReport(DAY, DAY, ["lake", "clickhouse"], list(checks))


def _passing() -> CheckResult:
    return CheckResult("reconciliation", PASS, "1 date(s), the same distinct event_ids in every store",
                       ["date", "lake distinct", "clickhouse distinct", "status"], [["2026-12-03", 120, 120, PASS]])


def _failing() -> CheckResult:
    return CheckResult("duplicates", FAIL, "1 duplicate row(s) in 1 store(s)",
                       ["date", "store", "rows", "duplicates", "status"],
                       [["2026-12-03", "lake", 121, 1, FAIL], ["2026-12-03", "clickhouse", 120, 0, PASS]],
                       [Finding("lake", "e-1", "stored 2 times on 2026-12-03")], findings_total=3,
                       notes=["a note"])


def test_text_has_a_table_per_check_with_aligned_columns_and_a_verdict():
    text = render_text(_report(_passing(), _failing()))
    lines = text.splitlines()
    assert lines[0] == "headwater quality 2026-12-03..2026-12-03  stores: lake, clickhouse"
    assert "== reconciliation: PASS - 1 date(s), the same distinct event_ids in every store" in lines
    header = lines.index("  date        lake distinct  clickhouse distinct  status")
    assert lines[header + 1] == "  ----------  -------------  -------------------  ------"
    assert lines[header + 2] == "  2026-12-03            120                  120  PASS"  # numbers right-aligned
    assert "  FAIL  lake        e-1  stored 2 times on 2026-12-03" in lines
    assert "  ... 2 more finding(s) not listed (raise --max-ids)" in lines
    assert "  note: a note" in lines
    assert lines[-1] == "RESULT: FAIL (1 of 2 check(s) failed: duplicates)"


def test_text_verdicts_for_pass_and_warnings():
    assert render_text(_report(_passing())).splitlines()[-1] == "RESULT: PASS (1 check(s) passed)"
    warned = CheckResult("referential_integrity", WARN, "2 row(s) whose user changed tier since the event",
                         ["store", "status"], [["lake", WARN]], [Finding("lake", "e-9", "changed", WARN)], 1)
    report = _report(_passing(), warned)
    assert report.status == WARN and report.exit_code == 0
    assert render_text(report).splitlines()[-1] == "RESULT: WARN (warnings: referential_integrity)"


def test_missing_values_render_as_dashes_and_skip_does_not_fail():
    skipped = CheckResult("reconciliation", SKIP, "needs at least two stores", ["date", "lake", "status"],
                          [["2026-12-03", None, SKIP]])
    report = _report(skipped)
    lines = render_text(report).splitlines()
    assert "  2026-12-03     -  SKIP" in lines
    assert lines[-1] == "RESULT: PASS (0 check(s) passed, 1 skipped)"
    assert report.status == PASS and report.exit_code == 0


def test_exit_code_follows_the_worst_status():
    assert _report(_passing()).exit_code == 0
    assert _report(_passing(), _failing()).exit_code == 1


def test_json_keys_rows_by_column_and_keeps_the_findings():
    report = _report(_passing(), _failing())
    doc = json.loads(render_json(report))
    assert doc == report_dict(report)
    assert doc["status"] == FAIL and doc["exit_code"] == 1 and doc["from"] == doc["to"] == "2026-12-03"
    assert doc["stores"] == ["lake", "clickhouse"]
    duplicates = doc["checks"][1]
    assert duplicates["rows"][0] == {"date": "2026-12-03", "store": "lake", "rows": 121, "duplicates": 1,
                                     "status": FAIL}
    assert duplicates["findings"] == [{"severity": FAIL, "store": "lake", "event_id": "e-1",
                                       "problem": "stored 2 times on 2026-12-03"}]
    assert duplicates["findings_total"] == 3 and duplicates["notes"] == ["a note"]


def test_findings_without_event_id_show_a_dash():
    check = CheckResult("kafka", INFO, "x", ["a"], [], [Finding("lake", None, "whole store", INFO)], 1)
    assert "  INFO  lake        -  whole store" in render_text(_report(check)).splitlines()
