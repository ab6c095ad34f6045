"""The Grafana dashboard: valid JSON of a recent schema, a data-source variable used by every query, the panels
operators need, PromQL that parses (promtool) and that selects only metrics the code defines."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.unit.ops.promql import CANARY_METRICS, GENERATED_METRICS, REPO, defined_metric_names, metric_names

DASHBOARD = REPO / "ops" / "grafana" / "headwater-dashboard.json"


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def _exprs(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, expr) for every query, the namespace variable's included."""
    exprs = [(p["title"], t["expr"]) for p in _panels(dashboard) for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            exprs.append((f"variable {var['name']}", query))
    return exprs


def test_dashboard_is_valid_json_with_a_recent_schema() -> None:
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in _panels(dashboard):
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]


def test_every_query_uses_the_datasource_variable() -> None:
    dashboard = _dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_the_panels_operators_need_are_there() -> None:
    used = set().union(*(metric_names(expr) for _, expr in _exprs(_dashboard())))
    for needed in ("analytics_ingest_events_total",            # ingest rate by result
                   "analytics_schema_failures_total",          # rejection reasons
                   "analytics_gateway_backpressure_total",
                   "analytics_ingest_request_seconds_bucket",  # latency p50/p99
                   "analytics_pipeline_lag_seconds",           # lag per sink
                   "bytewax_kafka_consumer_lag",               # consumer lag
                   "analytics_gateway_spool_bytes",            # spool depth
                   "analytics_sink_rows_total",                # sink rows and errors
                   "headwater_canary_success", "headwater_canary_latency_seconds"):
        assert needed in used, f"no panel shows {needed}"
    exprs = " ".join(expr for _, expr in _exprs(_dashboard()))
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.99," in exprs


def test_queries_select_only_metrics_the_code_defines() -> None:
    known = defined_metric_names() | CANARY_METRICS | GENERATED_METRICS
    for title, expr in _exprs(_dashboard()):
        names = metric_names(expr)
        assert names, f"{title}: no metric found in {expr!r}"
        assert not names - known, f"{title}: {sorted(names - known)} are not exported by the code"


def test_the_canary_metrics_are_documented_for_headwater_smoke() -> None:
    readme = (REPO / "ops" / "README.md").read_text()
    for name in CANARY_METRICS:
        assert f"`{name}`" in readme, f"ops/README.md does not document {name}"


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not installed (Debian package 'prometheus': apt-get install -y prometheus)")
def test_queries_parse_as_promql(tmp_path: Path) -> None:
    """Each panel query, with Grafana's variables filled in, becomes a recording rule that promtool checks."""
    rules = []
    for i, (title, expr) in enumerate(e for e in _exprs(_dashboard()) if not e[0].startswith("variable ")):
        concrete = expr.replace("$__rate_interval", "5m").replace("$namespace", ".*")
        assert "$" not in concrete, f"{title}: unknown variable in {expr!r}"
        rules.append({"record": f"dashboard:query_{i}", "expr": concrete})
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"promtool rejected a dashboard query:\n{result.stdout}\n{result.stderr}"
