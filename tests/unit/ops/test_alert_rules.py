"""The Prometheus alert rules: promtool accepts them and their unit tests pass, every alert is tested both ways,
links a runbook section that exists, and uses only metric names the code defines."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.unit.ops.promql import CANARY_METRICS, GENERATED_METRICS, REPO, defined_metric_names, metric_names

RULES = REPO / "ops" / "alerts" / "headwater.rules.yml"
RULE_TESTS = sorted((REPO / "ops" / "alerts" / "tests").glob("*.test.yml"))
RUNBOOK = REPO / "ops" / "RUNBOOK.md"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package 'prometheus': apt-get install -y prometheus)")


def _alerts() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def _promtool(*args: str) -> None:
    result = subprocess.run([PROMTOOL, *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (f"promtool {' '.join(args)} failed ({result.returncode}):\n"
                                    f"{result.stdout}\n{result.stderr}")


@needs_promtool
def test_promtool_check_rules() -> None:
    _promtool("check", "rules", str(RULES.relative_to(REPO)))


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    assert RULE_TESTS, "no ops/alerts/tests/*.test.yml"
    _promtool("test", "rules", *(str(p.relative_to(REPO)) for p in RULE_TESTS))


def test_the_required_alerts_exist() -> None:
    names = {a["alert"] for a in _alerts()}
    required = {"HeadwaterIngestFailureRateHigh", "HeadwaterPipelineLagHigh", "HeadwaterSinkWriteFailures",
                "HeadwaterGatewaySpoolFilling", "HeadwaterKafkaConsumerLagGrowing", "HeadwaterCanaryFailing",
                "HeadwaterGatewayDown"}
    assert required <= names, f"missing: {sorted(required - names)}"
    thresholds = {a["alert"]: a["expr"] for a in _alerts()}
    assert "> 0.005" in thresholds["HeadwaterIngestFailureRateHigh"]
    assert "analytics_pipeline_lag_seconds" in thresholds["HeadwaterPipelineLagHigh"]
    assert "> 120" in thresholds["HeadwaterPipelineLagHigh"]


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {a["alert"] for a in _alerts()}
    assert not names - fired, f"alerts never shown firing: {sorted(names - fired)}"
    assert not names - quiet, f"alerts never shown quiet: {sorted(names - quiet)}"


def test_every_alert_links_an_existing_runbook_section() -> None:
    anchors = {re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
               for line in RUNBOOK.read_text().splitlines() if line.startswith("#")}
    for alert in _alerts():
        url = alert["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path == "ops/RUNBOOK.md", url
        assert anchor in anchors, f"{alert['alert']}: no heading for #{anchor} in ops/RUNBOOK.md"
        assert alert["labels"]["severity"] in {"critical", "warning"}
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]


def test_alerts_use_only_metrics_the_code_defines() -> None:
    known = defined_metric_names() | CANARY_METRICS | GENERATED_METRICS
    for alert in _alerts():
        unknown = metric_names(alert["expr"]) - known
        assert not unknown, f"{alert['alert']} uses metrics nothing exports: {sorted(unknown)}"
