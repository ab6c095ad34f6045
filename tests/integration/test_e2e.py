"""End to end, as a user runs it: the Python client SDK → ``headwater gateway`` → Kafka → ``headwater flow`` → the
Parquet lake (moto S3), ClickHouse (the Debian server) and Snowflake (fakesnow), every one a real process or service.

Checks counts (each accepted event exactly once in each sink, rejected and opted-out ones nowhere) and contents
(PII hashed under the quarter's salt, geo and plan tier filled from the geo database and the OLTP table). Then
``headwater smoke`` runs against the same pipeline, and once more with the flow stopped, when it must fail.
"""
from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from geoip.build import build_city_database
from headwater import traffic
from headwater.settings import load_settings, quarter_of
from headwater.sinkcheck import SINKS, SinkReader
from headwater.procs import stop_process_group
from tests.integration.gateway_support import free_port, gateway_process

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
MASTER_KEY = b"e2e-master-key-0123456789abcdef!"
KID = "e2e"
SALT = b"e2e-pii-salt-0123456789abcdef-01"
DEMO_GEO_CSV = REPO / "geoip" / "data" / "demo-cities.csv"


@pytest.fixture()
def pipeline_env(devstack, stack_settings, tmp_path):
    """Settings of a pipeline of this test's own on the devstack: private topics, ClickHouse database, Snowflake
    schema, lake prefix and accounts table, so nothing another test writes is counted here."""
    import psycopg
    from confluent_kafka.admin import AdminClient, NewTopic

    suffix = uuid.uuid4().hex[:8]
    topics = {k: f"e2e.{k}.{suffix}" for k in ("raw", "rejected", "invalid")}
    admin = AdminClient(stack_settings.kafka_config())
    for future in admin.create_topics([NewTopic(t, 4, 1) for t in topics.values()]).values():
        future.result(15)
    people = traffic.population(30, seed=int(suffix[:6], 16))
    table = f"accounts_e2e_{suffix}"
    pg = stack_settings.postgres_url.reveal()
    with psycopg.connect(pg, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (user_id text primary key, plan_tier text, updated_at timestamptz)")
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {table} VALUES (%s, %s, now())", traffic.accounts(people))
    today = dt.datetime.now(dt.timezone.utc).date()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
    env.update(devstack.env())
    env.update({
        "HEADWATER_KAFKA_TOPIC_RAW": topics["raw"], "HEADWATER_KAFKA_TOPIC_REJECTED": topics["rejected"],
        "HEADWATER_KAFKA_TOPIC_INVALID": topics["invalid"],
        "HEADWATER_CLICKHOUSE_URL": f"clickhouse://127.0.0.1:{devstack.ports['clickhouse']}/hw_e2e_{suffix}",
        "HEADWATER_SNOWFLAKE_URL": f"snowflake://headwater@fakesnow/ANALYTICS/HWE2E_{suffix.upper()}"
                                   f"?host=127.0.0.1&port={devstack.ports['snowflake']}&protocol=http",
        "HEADWATER_SNOWFLAKE_PASSWORD": "fakesnow",
        "HEADWATER_S3_URL": f"{stack_settings.s3_url.rstrip('/')}/e2e-{suffix}",
        "HEADWATER_PLAN_TIER_TABLE": table,
        "HEADWATER_HMAC_KEYS": f"{KID}:{base64.b64encode(MASTER_KEY).decode()}",
        "HEADWATER_ADMIN_TOKEN": "e2e-admin-token",
        "HEADWATER_PII_SALTS": f"{quarter_of(today)}:{base64.b64encode(SALT).decode()}",
        "HEADWATER_GEOIP_DB": str(build_city_database(DEMO_GEO_CSV, tmp_path / "city.mmdb")),
        "HEADWATER_DATA_DIR": str(tmp_path / "data"),
        "HEADWATER_LOG_LEVEL": "WARNING",
        "HEADWATER_FLOW_BATCH_TIMEOUT_MS": "200",
        "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
        "BYTEWAX_DATAFLOW_API_ENABLED": "1", "BYTEWAX_DATAFLOW_API_PORT": str(free_port()),
        "BYTEWAX_DATAFLOW_API_CACHE_PATH": str(tmp_path),  # a directory: Bytewax writes dataflow.json in it
    })
    yield env, people
    settings = load_settings({k: v for k, v in env.items() if k.startswith("HEADWATER_")})
    with SinkReader(settings) as reader:
        try:
            reader.writer("clickhouse").query(f"DROP DATABASE IF EXISTS hw_e2e_{suffix}")
            sf = reader.writer("snowflake")
            for t in ("EVENTS", "EVENTS_STAGING"):
                sf.query(f"DROP TABLE IF EXISTS {sf.target.qualified(t)}")
        except Exception:
            pass
    with psycopg.connect(pg, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
    try:
        admin.delete_topics(list(topics.values()))
    except Exception:
        pass


@contextlib.contextmanager
def _pushgateway():
    """A stand-in Pushgateway on a free port that records what is pushed to it."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    pushes: list[tuple[str, str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            pushes.append(("PUT", self.path, body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", pushes
    finally:
        server.shutdown()


def _start_flow(env: dict[str, str], tmp_path: Path) -> subprocess.Popen:
    log = open(tmp_path / "flow.log", "wb")
    return subprocess.Popen([sys.executable, "-m", "headwater", "flow", "-r", str(tmp_path / "recovery"), "-s", "1",
                             "-b", "0"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    stop_process_group(proc, signal.SIGINT)  # Bytewax stops cleanly on an interrupt


def _send(base: str, people: list[traffic.Person], tmp_path: Path) -> tuple[dict[str, tuple], set[str], set[str]]:
    """Traffic through the SDK. Returns ``(accepted {event_id: (person, event)}, rejected ids, opted-out ids)``."""
    from headwater_client import AnalyticsClient, AnalyticsEmitter

    rng = random.Random(7)
    opted_out = people[0]
    req = __import__("urllib.request").request.Request(
        f"{base}/analytics/optout/{opted_out.device_id}", method="POST",
        headers={"Authorization": "Bearer e2e-admin-token"})
    with __import__("urllib.request").request.urlopen(req, timeout=10) as resp:
        assert resp.status in (200, 201)
    accepted: dict[str, tuple] = {}
    rejected: set[str] = set()
    blocked: set[str] = set()
    for i, person in enumerate(people):
        client = AnalyticsClient(url=base, device_id=person.device_id, kid=KID, master_key=MASTER_KEY,
                                 queue_path=tmp_path / "sdk" / f"{person.device_id}.sqlite3",
                                 anonymous_id=person.anonymous_id, app_version=person.app_version,
                                 locale=person.locale, experiments=person.experiments, flush_interval=0)
        try:
            events = traffic.session(person, rng, 12)
            events.insert(0, traffic.ClientEvent("identify", traffic._identify(person, rng)))
            if i % 4 == 1:
                events.append(traffic.INVALID_EVENTS[i % len(traffic.INVALID_EVENTS)])
            ids = [(client.track(ev.name, ev.properties, user_id=person.user_id if ev.signed_in else None,
                                 context=person.context()), ev) for ev in events]
            result = client.flush(timeout=30)
            assert result.pending == 0 and result.failed == 0, result
            bad = {r["event_id"] for r in result.rejected}
            rejected |= bad
            for event_id, ev in ids:
                if person is opted_out:
                    blocked.add(event_id)
                elif event_id not in bad:
                    accepted[event_id] = (person, ev)
            assert bad == {eid for eid, ev in ids if not ev.valid}
        finally:
            client.close()
    emitter = AnalyticsEmitter(url=base, service="billing", kid=KID, master_key=MASTER_KEY,
                               queue_path=tmp_path / "sdk" / "billing.sqlite3", flush_interval=0)
    try:
        for ev in traffic.server_events(people[1:], rng, 40):
            event_id = getattr(emitter, ev.method)(**ev.kwargs)
            person = next(p for p in people if p.user_id == ev.kwargs["user_id"])
            accepted[event_id] = (person, traffic.ClientEvent(ev.method, ev.kwargs))
        result = emitter.flush(timeout=30)
        assert result.rejected == [] and result.pending == 0, result
    finally:
        emitter.close()
    return accepted, rejected, blocked


def _wait_everywhere(reader: SinkReader, ids: list[str], flow: subprocess.Popen, tmp_path: Path,
                     timeout: float = 120) -> dict[str, dict[str, int]]:
    deadline = time.monotonic() + timeout
    found: dict[str, dict[str, int]] = {}
    while time.monotonic() < deadline:
        assert flow.poll() is None, (tmp_path / "flow.log").read_text(errors="replace")[-3000:]
        for sink in SINKS:
            try:
                found[sink] = reader.find(sink, ids)
            except Exception:  # the table or the lake prefix appears with the flow's first write
                found[sink] = {}
        if all(len(found[s]) == len(ids) for s in SINKS):
            return found
        time.sleep(1)
    return found


def test_sdk_to_every_sink_exactly_once_with_pii_hashed_and_enrichment(pipeline_env, tmp_path):
    env, people = pipeline_env
    settings = load_settings({k: v for k, v in env.items() if k.startswith("HEADWATER_")})
    flow = _start_flow(env, tmp_path)
    try:
        with gateway_process(env) as base:
            accepted, rejected, blocked = _send(base, people, tmp_path)
            assert rejected and blocked and len(accepted) > 300
            ids = sorted(accepted)
            with SinkReader(settings) as reader:
                found = _wait_everywhere(reader, ids, flow, tmp_path)
                for sink in SINKS:
                    assert len(found[sink]) == len(ids), f"{sink}: {len(ids) - len(found[sink])} events missing"
                    assert set(found[sink].values()) == {1}, f"{sink}: some events stored more than once"
                    assert not reader.find(sink, sorted(rejected | blocked)), f"{sink} holds refused events"
                    counted = reader.count(sink)
                    assert counted.error is None and counted.rows == counted.distinct_event_ids == len(ids), counted
                _check_contents(reader, accepted)
            _check_metrics(base, env, accepted, rejected, blocked)

            with _pushgateway() as (push_url, pushes):
                smoke = subprocess.run([sys.executable, "-m", "headwater", "smoke", "--url", base, "--timeout", "60",
                                        "--json", "--textfile", str(tmp_path / "canary.prom"),
                                        "--pushgateway", push_url], cwd=REPO, env={**env, "POD_NAMESPACE": "e2e"},
                                       capture_output=True, text=True, timeout=120)
            assert smoke.returncode == 0, smoke.stdout + smoke.stderr
            outcome = json.loads(smoke.stdout.splitlines()[-2])
            assert outcome["ok"] and set(outcome["latency_seconds"]) == set(SINKS)
            assert "headwater_canary_success 1" in (tmp_path / "canary.prom").read_text()
            (method, path, body), = pushes
            assert (method, path) == ("PUT", "/metrics/job/headwater-canary/namespace/e2e")
            assert "headwater_canary_success 1.0" in body and 'headwater_canary_latency_seconds{sink="clickhouse"}' in body

            _stop(flow)  # no flow: the canary is accepted but never arrives, and smoke must say so
            smoke = subprocess.run([sys.executable, "-m", "headwater", "smoke", "--url", base, "--timeout", "4"],
                                   cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
            assert smoke.returncode == 1, smoke.stdout + smoke.stderr
            assert "not visible within 4 s" in smoke.stderr
    finally:
        _stop(flow)


def _check_metrics(base: str, env: dict[str, str], accepted: dict, rejected: set, blocked: set) -> None:
    """The gateway's and the flow's metrics moved with the traffic (DESIGN.md §2 names)."""
    from headwater.demo import sample, scrape

    gw = scrape(f"{base}/metrics")
    client_events = sum(1 for _, ev in accepted.values())
    assert sample(gw, "analytics_ingest_events_total", result="accepted") == client_events
    assert sample(gw, "analytics_ingest_events_total", result="rejected") == len(rejected)
    assert sample(gw, "analytics_ingest_events_total", result="no_consent") == len(blocked)
    assert sample(gw, "analytics_ingest_request_seconds_count", route="/analytics/collect") > 0
    flow = scrape(f"http://127.0.0.1:{env['BYTEWAX_DATAFLOW_API_PORT']}/metrics")
    assert flow, "the flow serves no metrics"
    for sink in SINKS:
        assert sample(flow, "analytics_sink_rows_total", sink=sink, result="written") >= len(accepted)
        lag = flow.get(("analytics_pipeline_lag_seconds", (("sink", sink),)))
        assert lag is not None and 0 <= lag < 120, (sink, lag)
    assert sample(flow, "analytics_flow_events_total", stage="source", result="in") >= len(accepted)
    lags = [k for k in flow if k[0] == "bytewax_kafka_consumer_lag"]
    assert lags, "no Kafka consumer lag per partition"


def _check_contents(reader: SinkReader, accepted: dict[str, tuple]) -> None:
    salt_id = quarter_of(dt.datetime.now(dt.timezone.utc).date())
    identify_ids = [eid for eid, (_, ev) in accepted.items() if ev.name == "identify"]
    columns = ["event_id", "event", "user_id", "pii_salt_id", "country", "city", "plan_tier", "properties",
               "ip_truncated"]
    for sink in SINKS:
        rows = {r["event_id"]: r for r in reader.rows(sink, sorted(accepted), columns)}
        assert len(rows) == len(accepted)
        for event_id, row in rows.items():
            person, ev = accepted[event_id]
            assert row["event"] == ev.name
            assert row["pii_salt_id"] == salt_id
            if ev.name not in ("automation_run", "moderation_action", "subscription_started",
                               "subscription_cancelled", "payment_failed"):
                # client events carry the device's IP: geo from the demo ranges, the address cut to its /24
                assert row["country"] and row["city"], (sink, row)
                assert row["ip_truncated"] == person.ip.rsplit(".", 1)[0] + ".0", (sink, row)
            if row["user_id"]:
                assert row["plan_tier"] == (person.plan_tier if person.known_to_oltp else "unknown"), (sink, row)
        for event_id in identify_ids:
            person, _ = accepted[event_id]
            props = rows[event_id]["properties"]
            props = json.loads(props) if isinstance(props, str) else props
            # x-pii hash: HMAC-SHA256 under the quarter's salt of the normalised value, the same in every sink
            assert props["email"] == hmac.new(SALT, person.email.strip().lower().encode(), hashlib.sha256).hexdigest()
            assert props["phone"] == hmac.new(SALT, person.phone.encode(), hashlib.sha256).hexdigest()
            assert "name" not in props and "first_name" not in props  # x-pii: drop
            assert person.email not in json.dumps(rows[event_id], default=str)
