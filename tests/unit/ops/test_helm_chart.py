"""The Helm chart, rendered and linted by Helm itself (the Go library shipped in the ``helm-python-sdk`` wheel),
for several value sets. The rendered objects are parsed and checked; the flow's shell scripts (hostfile, recovery
partitions, the ``headwater flow`` command line) are run here as a pod would run them, and the settings a pod
would see are loaded by the real ``load_settings``."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.ops.promql import REPO

helm = pytest.importorskip("helm_python.chart", reason="helm-python-sdk is not installed (pip install -e .[test])")

from headwater.settings import SECRET_FIELDS, Settings, load_settings  # noqa: E402

CHART = REPO / "helm" / "headwater"
RELEASE, NAMESPACE = "hw", "analytics"
VENV_BIN = Path(sys.executable).parent

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "no-ingress-no-hpa": {"gateway": {"ingress": {"enabled": False}, "hpa": {"enabled": False}, "replicas": 3}},
    "flow-cluster-of-3": {"flow": {"replicas": 3, "workersPerProcess": 2,
                                   "recovery": {"enabled": True, "partitions": 6, "snapshotInterval": 15}}},
    "existing-secret": {"secrets": {"existingSecret": "headwater-prod",
                                    "existingSecretKeys": ["hmac_keys", "pii_salts", "clickhouse_password"]}},
}

KEY = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo="  # 26 bytes, base64

#: A value for every non-secret setting, each different from its default, all valid together.
ALL_CONFIG: dict[str, Any] = {
    "data_dir": "/var/lib/headwater", "log_level": "WARNING",
    "kafka_brokers": "kafka-0.kafka:9092,kafka-1.kafka:9092", "kafka_security_protocol": "SASL_SSL",
    "kafka_sasl_mechanism": "SCRAM-SHA-512", "kafka_sasl_username": "headwater",
    "kafka_ssl_ca_location": "/etc/kafka-ca/ca.crt", "kafka_options": {"linger.ms": 5, "compression.type": "zstd"},
    "kafka_topic_raw": "prod.events.raw", "kafka_topic_rejected": "prod.events.rejected",
    "kafka_topic_invalid": "prod.events.invalid",
    "s3_url": "s3://lake/headwater", "s3_endpoint_url": "https://minio.storage:9000", "s3_region": "eu-west-1",
    "s3_access_key_id": "AKIAHEADWATER",
    "clickhouse_url": "clickhouses://ch.db:9440/analytics", "clickhouse_user": "loader", "clickhouse_secure": True,
    "snowflake_url": "snowflake://loader@acme-xy123/ANALYTICS/PUBLIC?warehouse=LOAD",
    "signature_skew_seconds": 120, "max_batch_events": 40, "max_body_bytes": 262144,
    "max_decompressed_bytes": 2097152, "max_event_bytes": 16384, "dedup_window_seconds": 3600,
    "tls_cert_file": None, "tls_key_file": None,  # set by gateway.tls.secretName
    "gateway_id": "gw-prod", "gateway_dark_mode": True, "gateway_edge_proxy_enabled": False,
    "gateway_rollout_percent": 5, "gateway_rollout_salt": "rollout-2027", "gateway_flags_file": None,  # chart sets it
    "gateway_flags_check_seconds": 2.5, "gateway_require_signature": True, "gateway_max_inflight_requests": 128,
    "gateway_retry_after_seconds": 3, "gateway_spool_max_bytes": 2147483648, "gateway_delivery_timeout_ms": 8000,
    "gateway_optout_refresh_seconds": 10.0, "gateway_trust_forwarded_for": True, "gateway_allocator": "system",
    "segment_max_batch_events": 200,
    "geoip_db": "/data/geoip/dbip-city-lite.mmdb", "pii_salt_overlap_days": 21, "ip_handling": "drop",
    "flow_outputs": "lake,clickhouse", "flow_batch_size": 1000, "flow_batch_timeout_ms": 250,
    "plan_tier_table": "billing.accounts", "plan_tier_ttl_seconds": 120.5, "geoip_cache_size": 50000,
    "clock_skew_max_seconds": 86400,
}
ALL_SECRETS = {
    "hmac_keys": f"2026a:{KEY},2026b:{KEY}", "pii_salts": f"2026Q4:{KEY}\n2027Q1:{KEY}", "write_keys": "wk_1,wk_2",
    "admin_token": "t0ken", "audit_hash_key": KEY, "kafka_sasl_password": "kafka-pw", "s3_secret_access_key": "s3-pw",
    "clickhouse_password": "ch-pw", "snowflake_password": "sf-pw", "snowflake_private_key": "-----BEGIN KEY-----",
    "redis_url": "redis://redis:6379/0", "postgres_url": "postgresql://hw@pg/oltp",
}
VALUE_SETS["every-setting"] = {"config": ALL_CONFIG, "secrets": {"values": ALL_SECRETS},
                               "gateway": {"tls": {"secretName": "gateway-tls"}},
                               "canary": {"pushgatewayUrl": "http://pushgateway.monitoring:9091"}}


def render(values: dict[str, Any]) -> list[dict]:
    manifests = helm.Chart.load(CHART).render(values, name=RELEASE, namespace=NAMESPACE)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def kinds(objects: list[dict]) -> list[str]:
    return sorted(o["kind"] for o in objects)


def container(workload: dict, name: str | None = None) -> dict:
    spec = workload["spec"]
    pod = spec["jobTemplate"]["spec"]["template"]["spec"] if workload["kind"] == "CronJob" else spec["template"]["spec"]
    return next(c for c in pod["containers"] if name is None or c["name"] == name)


def pod_spec(workload: dict) -> dict:
    spec = workload["spec"]
    return spec["jobTemplate"]["spec"]["template"]["spec"] if workload["kind"] == "CronJob" else spec["template"]["spec"]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: render(values) for name, values in VALUE_SETS.items()}


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_helm_lint_is_clean(value_set: str) -> None:
    report = helm.lint(CHART, VALUE_SETS[value_set], strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, json.dumps(problems, indent=2)


def test_defaults_render_every_component(rendered) -> None:
    objects = rendered["defaults"]
    assert kinds(objects) == sorted([
        "ConfigMap", "ConfigMap", "ConfigMap", "CronJob", "CronJob", "Deployment", "HorizontalPodAutoscaler",
        "Ingress", "PodDisruptionBudget", "PodMonitor", "PrometheusRule", "Service", "Service", "ServiceAccount",
        "ServiceMonitor", "StatefulSet"])
    gateway = one(objects, "Deployment")
    assert "replicas" not in gateway["spec"], "the HPA owns the replica count"
    gw = container(gateway)
    assert gw["args"][:7] == ["gateway", "--host", "0.0.0.0", "--port", "8080", "--workers", "1"]
    assert gw["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert gw["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert {"name": "http", "containerPort": 8080, "protocol": "TCP"} in gw["ports"]
    assert "spool" in " ".join(gw["lifecycle"]["preStop"]["exec"]["command"])
    assert gw["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod_spec(gateway)["securityContext"]["runAsNonRoot"] is True
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == gateway["metadata"]["name"]
    ingress = one(objects, "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": gateway["metadata"]["name"], "port": {"name": "http"}}
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == gateway["spec"]["selector"]["matchLabels"]
    # No secret values given: no Secret, and no secret *_FILE pointing at a file that would not exist.
    assert not _secret_files(gw), _secret_files(gw)
    # The rollout starts dark and at 0 %.
    flags = one(objects, "ConfigMap", "hw-headwater-flags")["data"]["flags.toml"]
    assert "dark_mode = true" in flags and "rollout_percent = 0" in flags


def test_ingress_and_hpa_can_be_turned_off(rendered) -> None:
    objects = rendered["no-ingress-no-hpa"]
    assert "Ingress" not in kinds(objects) and "HorizontalPodAutoscaler" not in kinds(objects)
    assert one(objects, "Deployment")["spec"]["replicas"] == 3


def _script_env(c: dict, pod_name: str, overrides: dict[str, str]) -> dict[str, str]:
    """A container's literal env, its field references resolved as the kubelet would for ``pod_name``."""
    env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
    for item in c.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            field = item["valueFrom"]["fieldRef"]["fieldPath"]
            env[item["name"]] = {"metadata.name": pod_name, "metadata.namespace": NAMESPACE}[field]
    env.update(overrides)
    return env


def _run_script(c: dict, env: dict[str, str], *args: str) -> str:
    command = c["command"]
    assert command[:2] == ["/bin/sh", "-c"], command
    result = subprocess.run([*command, *c.get("args", []), *args], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, f"{c['name']} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_flow_runs_as_a_bytewax_cluster_of_three(rendered, tmp_path: Path) -> None:
    objects = rendered["flow-cluster-of-3"]
    sts = one(objects, "StatefulSet")
    name = sts["metadata"]["name"]
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    service = one(objects, "Service", sts["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    claim = sts["spec"]["volumeClaimTemplates"][0]
    assert claim["metadata"]["name"] == "recovery"
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    init = {c["name"]: c for c in pod_spec(sts)["initContainers"]}
    main = container(sts, "flow")
    assert {p["name"]: p["containerPort"] for p in main["ports"]} == {"process": 9999, "api": 3030}

    hostfile = tmp_path / "hostfile.txt"
    recovery = {i: tmp_path / f"recovery-{i}" for i in range(3)}
    for i, directory in recovery.items():
        directory.mkdir()
        pod = f"{name}-{i}"
        fake = {"BYTEWAX_HOSTFILE_PATH": str(hostfile), "BYTEWAX_RECOVERY_DIRECTORY": str(directory),
                "TMPDIR": str(tmp_path)}
        _run_script(init["hostfile"], _script_env(init["hostfile"], pod, fake))
        _run_script(init["init-recovery"], _script_env(init["init-recovery"], pod, fake))
    addresses = hostfile.read_text().split()
    assert addresses == [f"{name}-{i}.{name}.{NAMESPACE}.svc.cluster.local:9999" for i in range(3)]

    # Each process holds its own share of the 6 partitions; together they hold each exactly once.
    held = {i: sorted(p.name for p in d.glob("part-*.sqlite3")) for i, d in recovery.items()}
    assert held == {0: ["part-0.sqlite3", "part-3.sqlite3"], 1: ["part-1.sqlite3", "part-4.sqlite3"],
                    2: ["part-2.sqlite3", "part-5.sqlite3"]}
    # A restart finds them and initialises nothing again.
    fake = {"BYTEWAX_HOSTFILE_PATH": str(hostfile), "BYTEWAX_RECOVERY_DIRECTORY": str(recovery[1]),
            "TMPDIR": str(tmp_path)}
    out = _run_script(init["init-recovery"], _script_env(init["init-recovery"], f"{name}-1", fake))
    assert "already holds" in out and sorted(p.name for p in recovery[1].glob("part-*")) == held[1]

    # The main container's command line, as `headwater flow --print-command` resolves it for process 1.
    out = _run_script(main, _script_env(main, f"{name}-1", fake), "--print-command")
    argv = out.strip().splitlines()[-1].split(" ")  # printed as " ".join(argv); the flag values hold no spaces
    flags = {flag: argv[argv.index(flag) + 1] for flag in ("-w", "-i", "-a", "-r", "-s", "-b")}
    assert argv[1:4] == ["-m", "bytewax.run", "flows.run:get_flow(output=None,"]
    assert flags["-i"] == "1" and flags["-w"] == "2"
    assert flags["-a"].split(";") == addresses
    assert flags["-r"] == str(recovery[1]) and flags["-s"] == "15" and flags["-b"] == "0"


def test_recovery_partitions_must_cover_every_process() -> None:
    with pytest.raises(Exception, match=r"flow.recovery.partitions \(2\) must be at least flow.replicas \(3\)"):
        render({"flow": {"replicas": 3, "recovery": {"partitions": 2}}})


def _setting_name(variable: str) -> str:
    """``HEADWATER_X`` or ``HEADWATER_X_FILE`` → the setting it sets."""
    name = variable.removeprefix("HEADWATER_").lower()
    return name if name in Settings.model_fields else name.removesuffix("_file")


def _secret_files(c: dict) -> dict[str, str]:
    """The container's secret settings given as files: setting name → path."""
    return {_setting_name(e["name"]): e["value"] for e in c.get("env", [])
            if e["name"].endswith("_FILE") and _setting_name(e["name"]) in SECRET_FIELDS}


def _pod_environment(objects: list[dict], workload: dict, files: Path) -> dict[str, str]:
    """What the process in ``workload`` sees: the settings ConfigMap, its literal env, and its secret files (written
    under ``files`` from the chart's Secret, at the paths the pod's mount would give them)."""
    c = container(workload)
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        env.update(one(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    secret = next((o for o in objects if o["kind"] == "Secret"), None)
    mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
    for item in c.get("env", []):
        if "value" not in item or not item["name"].startswith("HEADWATER_"):
            continue
        value = item["value"]
        if _setting_name(item["name"]) in SECRET_FIELDS:
            assert value.startswith(mounts["secrets"] + "/"), f"{item['name']} is not on the secrets mount"
            key = value.rsplit("/", 1)[1]
            volume = next(v for v in pod_spec(workload)["volumes"] if v["name"] == "secrets")
            assert {"key": key, "path": key} in volume["secret"]["items"]
            path = files / key
            path.write_text(secret["stringData"][key])
            value = str(path)
        env[item["name"]] = value
    return env


def test_every_headwater_setting_reaches_the_pods(rendered, tmp_path: Path) -> None:
    objects = rendered["every-setting"]
    workloads = [o for o in objects if o["kind"] in {"Deployment", "StatefulSet", "CronJob"}]
    assert len(workloads) == 4
    seen: set[str] = set()
    for workload in workloads:
        files = tmp_path / workload["metadata"]["name"]
        files.mkdir()
        env = _pod_environment(objects, workload, files)
        settings = load_settings(env)  # the real loader: every value the chart renders must validate
        seen.update(_setting_name(key) for key in env)
        for name, value in ALL_CONFIG.items():
            if value is None:
                continue
            got = getattr(settings, name)
            expected = ({k: str(v) for k, v in value.items()} if isinstance(value, dict)
                        else Path(value) if isinstance(got, Path) else value)
            assert got == expected, f"{workload['metadata']['name']}: {name} is {got!r}, not {value!r}"
    missing = set(Settings.model_fields) - seen
    assert not missing, f"settings that reach no pod: {sorted(missing)}"


def test_secret_settings_reach_only_the_pods_that_need_them(rendered) -> None:
    objects = rendered["every-setting"]

    def secret_names(workload: dict) -> set[str]:
        return set(_secret_files(container(workload)))

    gateway, flow = secret_names(one(objects, "Deployment")), secret_names(one(objects, "StatefulSet"))
    assert {"hmac_keys", "write_keys", "audit_hash_key"} <= gateway
    assert not gateway & {"pii_salts", "clickhouse_password", "snowflake_private_key", "s3_secret_access_key"}
    assert {"pii_salts", "clickhouse_password", "snowflake_private_key", "s3_secret_access_key"} <= flow
    assert not flow & {"hmac_keys", "write_keys", "admin_token"}
    for cronjob in (o for o in objects if o["kind"] == "CronJob"):
        assert secret_names(cronjob) == SECRET_FIELDS
    secret = one(objects, "Secret")
    assert set(secret["stringData"]) == SECRET_FIELDS
    gw = container(one(objects, "Deployment"))
    tls = {e["name"]: e["value"] for e in gw["env"] if e["name"].startswith("HEADWATER_TLS_")}
    assert tls == {"HEADWATER_TLS_CERT_FILE": "/etc/headwater/tls/tls.crt",
                   "HEADWATER_TLS_KEY_FILE": "/etc/headwater/tls/tls.key"}
    assert gw["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"


def test_an_existing_secret_is_mounted_not_created(rendered) -> None:
    objects = rendered["existing-secret"]
    assert "Secret" not in kinds(objects)
    for workload, expected in ((one(objects, "Deployment"), ["hmac_keys"]),
                               (one(objects, "StatefulSet"), ["clickhouse_password", "pii_salts"])):
        volume = next(v for v in pod_spec(workload)["volumes"] if v["name"] == "secrets")
        assert volume["secret"]["secretName"] == "headwater-prod"
        assert [i["key"] for i in volume["secret"]["items"]] == expected
        assert _secret_files(container(workload)) == {k: f"/etc/headwater/secrets/{k}" for k in expected}


def test_prometheus_rule_is_the_ops_rule_file(rendered) -> None:
    rule = one(rendered["defaults"], "PrometheusRule")
    ops = yaml.safe_load((REPO / "ops" / "alerts" / "headwater.rules.yml").read_text())
    assert rule["spec"]["groups"] == ops["groups"]
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"HeadwaterIngestFailureRateHigh", "HeadwaterPipelineLagHigh", "HeadwaterGatewayDown",
            "HeadwaterCanaryFailing"} <= set(alerts)
    assert "{{ $labels.instance }}" in alerts["HeadwaterGatewayDown"]["annotations"]["summary"]


def test_monitors_name_the_jobs_the_alerts_expect(rendered) -> None:
    objects = rendered["defaults"]
    service_monitor, pod_monitor = one(objects, "ServiceMonitor"), one(objects, "PodMonitor")
    gateway_service = one(objects, "Service", "hw-headwater-gateway")
    label = service_monitor["spec"]["jobLabel"]
    assert gateway_service["metadata"]["labels"][label] == "headwater-gateway"
    assert service_monitor["spec"]["selector"]["matchLabels"].items() <= gateway_service["metadata"]["labels"].items()
    assert service_monitor["spec"]["endpoints"][0]["port"] == "http"
    sts = one(objects, "StatefulSet")
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert pod_labels[pod_monitor["spec"]["jobLabel"]] == "headwater-flow"
    assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] == "api"
    env = {e["name"]: e.get("value") for e in container(sts)["env"]}
    assert env["BYTEWAX_DATAFLOW_API_ENABLED"] == "true" and env["BYTEWAX_DATAFLOW_API_PORT"] == "3030"


def test_dashboard_ships_for_the_grafana_sidecar(rendered) -> None:
    dashboard = one(rendered["defaults"], "ConfigMap", "hw-headwater-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(dashboard["data"]["headwater-dashboard.json"])
    assert shipped == json.loads((REPO / "ops" / "grafana" / "headwater-dashboard.json").read_text())


def test_cronjobs_run_the_canary_and_the_quality_checks(rendered) -> None:
    objects = rendered["every-setting"]
    canary = container(one(objects, "CronJob", "hw-headwater-canary"))
    assert canary["args"] == ["smoke", "--url", "https://hw-headwater-gateway.analytics.svc:80",
                              "--pushgateway", "http://pushgateway.monitoring:9091"]
    assert container(one(objects, "CronJob", "hw-headwater-quality"))["args"][0] == "quality"
    for cronjob in (o for o in objects if o["kind"] == "CronJob"):
        assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"


def test_values_are_documented_and_match_the_settings() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    non_secret = set(Settings.model_fields) - SECRET_FIELDS
    assert set(values["config"]) == non_secret, "values.yaml config must list every non-secret setting"
    assert set(schema["properties"]["config"]["properties"]) == non_secret
    assert set(values["secrets"]["values"]) == SECRET_FIELDS
    assert set(schema["properties"]["secrets"]["properties"]["values"]["properties"]) == SECRET_FIELDS
    assert set(values) == set(schema["properties"]), "values.schema.json must describe every top-level key"
    # Every key in values.yaml has a comment directly above it, except the fields of Kubernetes objects given whole.
    lines = (CHART / "values.yaml").read_text().splitlines()
    k8s_blocks = ("resources", "livenessProbe", "readinessProbe", "podSecurityContext", "securityContext",
                  "seccompProfile", "capabilities", "httpGet", "requests", "limits")
    parents: list[tuple[int, str]] = []
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z_][\w.-]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        parents = [(i, k) for i, k in parents if i < indent]
        inside_object = any(k in k8s_blocks for _, k in parents)
        parents.append((indent, key))
        if inside_object:
            continue
        previous = lines[number - 1].strip() if number else ""
        assert previous.startswith("#"), f"values.yaml line {number + 1}: {key!r} has no comment above it"


def test_flag_changes_reload_live_while_setting_changes_roll_the_pods() -> None:
    def gateway_pod(values: dict[str, Any]) -> tuple[dict, str]:
        objects = render(values)
        template = one(objects, "Deployment")["spec"]["template"]
        return template["metadata"]["annotations"], one(objects, "ConfigMap", "hw-headwater-flags")["data"]["flags.toml"]

    base, base_flags = gateway_pod({})
    flipped, flipped_flags = gateway_pod({"gateway": {"flags": {"dark_mode": False, "rollout_percent": 25}}})
    from ingest_gateway.rollout import Flags, parse_flags

    assert parse_flags(base_flags, Flags()) == Flags(edge_proxy_enabled=True, dark_mode=True, rollout_percent=0)
    assert parse_flags(flipped_flags, Flags()) == Flags(edge_proxy_enabled=True, dark_mode=False, rollout_percent=25)
    assert flipped == base, "a flags change must not restart the gateway pods"
    changed, _ = gateway_pod({"config": {"log_level": "DEBUG"}})
    assert changed["checksum/config"] != base["checksum/config"]
