"""A :class:`~quality.checks.QualityReport` as text (a table per check) or JSON (for alerting and dashboards)."""
from __future__ import annotations

import json
from typing import Any

from quality.checks import FAIL, SKIP, WARN, QualityReport


def _table(columns: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [[str(c) for c in columns]] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    # Text left, numbers right: counts line up for comparison across stores.
    numeric = [all(row[i].lstrip("-").isdigit() or row[i] == "-" for row in cells[1:]) and len(cells) > 1
               for i in range(len(columns))]

    def line(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)).rstrip()

    return [line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]]


def render_text(report: QualityReport) -> str:
    """Readable report: a header, then per check its status, table, findings and notes, then the verdict."""
    out = [f"headwater quality {report.start}..{report.end}  stores: {', '.join(report.stores)}", ""]
    for check in report.checks:
        out.append(f"== {check.name}: {check.status} - {check.summary}")
        if check.rows:
            out.extend("  " + line for line in _table(check.columns, check.rows))
        for finding in check.findings:
            out.append(f"  {finding.severity:<4}  {finding.store:<10}  {finding.event_id or '-'}  {finding.problem}")
        if check.findings_total > len(check.findings):
            out.append(f"  ... {check.findings_total - len(check.findings)} more finding(s) not listed "
                       f"(raise --max-ids)")
        out.extend(f"  note: {note}" for note in check.notes)
        out.append("")
    failed = [c.name for c in report.checks if c.status == FAIL]
    warned = [c.name for c in report.checks if c.status == WARN]
    verdict = f"RESULT: {report.status}"
    if failed:
        verdict += f" ({len(failed)} of {len(report.checks)} check(s) failed: {', '.join(failed)})"
    elif warned:
        verdict += f" (warnings: {', '.join(warned)})"
    else:
        skipped = sum(c.status == SKIP for c in report.checks)
        verdict += f" ({len(report.checks) - skipped} check(s) passed" + (f", {skipped} skipped)" if skipped else ")")
    out.append(verdict)
    return "\n".join(out) + "\n"


def report_dict(report: QualityReport) -> dict[str, Any]:
    """The report as plain JSON-able data; each table row becomes an object keyed by column."""
    return {
        "from": report.start.isoformat(), "to": report.end.isoformat(), "stores": report.stores,
        "status": report.status, "exit_code": report.exit_code,
        "checks": [{
            "name": c.name, "status": c.status, "summary": c.summary,
            "rows": [dict(zip(c.columns, row)) for row in c.rows],
            "findings": [{"severity": f.severity, "store": f.store, "event_id": f.event_id, "problem": f.problem}
                         for f in c.findings],
            "findings_total": c.findings_total, "notes": c.notes,
        } for c in report.checks],
    }


def render_json(report: QualityReport) -> str:
    return json.dumps(report_dict(report), indent=2, default=str) + "\n"
