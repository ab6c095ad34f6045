"""``headwater demo``: the whole pipeline on one machine, on the embedded defaults, with a summary to check.

What runs (all under ``var/demo/``, wiped at the start of each run):

- the Tansu broker and the fakesnow server (started through :class:`headwater.devstack.Devstack` on free ports),
- ``headwater gateway`` (one worker; idempotency in process, audit and opt-outs in SQLite),
- ``headwater flow`` with recovery on, writing to a Parquet lake in a local folder, chdb and fakesnow, with the
  plan tiers in SQLite and the geo database built from ``geoip/data/demo-cities.csv`` (or a DB-IP City Lite file
  when one was installed with ``headwater geoip fetch``).

Traffic comes from the Python client SDK: a population of people on web, iOS and Android, sessions of client
events with PII in them, some invalid events, some re-sent events, a subject opted out through the admin API,
people who never consented, and server-side domain events from an emitter. A few records are also produced
straight into the raw topic, past the gateway, to show the flow's dead-letter path.
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import random
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from headwater import traffic
from headwater_client import FlushResult
from headwater.settings import quarter_of

REPO = Path(__file__).resolve().parents[1]
DEMO_KID = "demo"
SINKS = ("lake", "clickhouse", "snowflake")
EXIT_OK, EXIT_MISMATCH, EXIT_ERROR = 0, 1, 2


# --- small helpers ----------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url: str, timeout: float = 2.0) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus samples at ``url`` as ``{(name, sorted labels): value}``; empty when unreachable."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            text = resp.read().decode()
    except (OSError, urllib.error.URLError):
        return {}
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def sample(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class Progress:
    """One status line, rewritten in place on a terminal and printed every few seconds otherwise."""

    def __init__(self, out=sys.stdout):
        self.out = out
        self.tty = out.isatty()
        self.t0 = time.monotonic()
        self._last = 0.0

    def step(self, text: str) -> None:
        self._clear()
        print(f"[{time.monotonic() - self.t0:6.1f}s] {text}", file=self.out, flush=True)

    def status(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            self.out.write(f"\r[{now - self.t0:6.1f}s]   {text}\033[K")
            self.out.flush()
        elif force or now - self._last >= 5:
            print(f"[{now - self.t0:6.1f}s]   {text}", file=self.out, flush=True)
            self._last = now

    def _clear(self) -> None:
        if self.tty:
            self.out.write("\r\033[K")


# --- the run ------------------------------------------------------------------------------------------------------
@dataclass
class DemoConfig:
    workdir: Path = Path("var/demo")
    users: int = 150
    session_min: int = 8
    session_max: int = 40
    server_events: int = 300
    seed: int = 42
    gateway_port: int = 0
    keep_running: bool = False
    drain_timeout: float = 180.0


@dataclass
class Tally:
    """What the client side saw: the SDK's answers, summed, and what the demo did besides."""

    answers: FlushResult = field(default_factory=FlushResult)
    tracked: int = 0
    not_captured: int = 0
    idempotent_replays: int = 0
    resent: int = 0
    direct_records: int = 0
    pii_planted: list[str] = field(default_factory=list)
    accepted_ids: set[str] = field(default_factory=set)


class Demo:
    def __init__(self, config: DemoConfig, out=sys.stdout):
        self.cfg = config
        self.root = Path(config.workdir).resolve()
        self.out = out
        self.progress = Progress(out)
        self.procs: dict[str, subprocess.Popen] = {}
        self.stack: Any = None
        self.env: dict[str, str] = {}
        self.tally = Tally()
        self.master_key = secrets.token_bytes(32)
        self.admin_token = secrets.token_urlsafe(24)
        self.gateway_url = ""
        self.flow_metrics_url = ""
        self.people: list[traffic.Person] = []
        self.letters: list[tuple[str, str | None, str]] = []

    # --- set-up ------------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        from headwater.devstack import Devstack

        if self.root.exists():
            old = Devstack(root=self.root / "stack")
            old.down()
            shutil.rmtree(self.root)
        for sub in ("data", "lake", "logs", "sdk", "geoip", "recovery"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        geo_db = self._geo_database()
        today = dt.datetime.now(dt.timezone.utc).date()
        last_quarter_day = dt.date(today.year, 3 * ((today.month - 1) // 3) + 1, 1) - dt.timedelta(days=1)
        salts = ",".join(f"{quarter_of(d)}:{base64.b64encode(secrets.token_bytes(32)).decode()}"
                         for d in (last_quarter_day, today))
        self.people = traffic.population(self.cfg.users, seed=self.cfg.seed)
        self._write_accounts(self.root / "data" / "accounts.sqlite3")
        self.stack = Devstack(root=self.root / "stack", ports={"kafka": free_port(), "snowflake": free_port()})
        gateway_port = self.cfg.gateway_port or free_port()
        flow_api_port = free_port()
        self.gateway_url = f"http://127.0.0.1:{gateway_port}"
        self.flow_metrics_url = f"http://127.0.0.1:{flow_api_port}/metrics"
        self.gateway_port = gateway_port
        self.env = {
            "HEADWATER_DATA_DIR": str(self.root / "data"),
            "HEADWATER_LOG_LEVEL": "WARNING",
            "HEADWATER_KAFKA_BROKERS": f"127.0.0.1:{self.stack.ports['kafka']}",
            "HEADWATER_S3_URL": str(self.root / "lake"),
            "HEADWATER_CLICKHOUSE_URL": f"chdb://{self.root / 'chdb'}",
            "HEADWATER_SNOWFLAKE_URL": (f"snowflake://headwater@fakesnow/ANALYTICS/PUBLIC?host=127.0.0.1"
                                        f"&port={self.stack.ports['snowflake']}&protocol=http"),
            "HEADWATER_SNOWFLAKE_PASSWORD": "fakesnow",
            "HEADWATER_HMAC_KEYS": f"{DEMO_KID}:{base64.b64encode(self.master_key).decode()}",
            "HEADWATER_ADMIN_TOKEN": self.admin_token,
            "HEADWATER_PII_SALTS": salts,
            "HEADWATER_GEOIP_DB": str(geo_db),
            "HEADWATER_FLOW_OUTPUTS": "all",
            "HEADWATER_FLOW_BATCH_TIMEOUT_MS": "200",
            "BYTEWAX_DATAFLOW_API_ENABLED": "1",
            "BYTEWAX_DATAFLOW_API_PORT": str(flow_api_port),
        }
        for name in ("HEADWATER_REDIS_URL", "HEADWATER_POSTGRES_URL", "HEADWATER_CONFIG"):
            self.env[name] = ""

    def _geo_database(self) -> Path:
        installed = sorted((REPO / "var" / "geoip").glob("dbip-city-lite-*.mmdb"))
        if os.environ.get("HEADWATER_GEOIP_DB"):
            path = Path(os.environ["HEADWATER_GEOIP_DB"])
            self.progress.step(f"geo database: {path} (from HEADWATER_GEOIP_DB)")
            return path
        if installed:
            from geoip.fetch import ATTRIBUTION
            self.progress.step(f"geo database: {installed[-1].name}. {ATTRIBUTION}")
            return installed[-1]
        from geoip.build import build_city_database

        path = build_city_database(REPO / "geoip" / "data" / "demo-cities.csv", self.root / "geoip" / "demo-cities.mmdb")
        self.progress.step("geo database: the bundled sample ranges (illustrative cities; `headwater geoip fetch` "
                           "installs DB-IP City Lite where there is internet access)")
        return path

    def _write_accounts(self, path: Path) -> None:
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE IF NOT EXISTS accounts (user_id TEXT PRIMARY KEY, plan_tier TEXT, updated_at TEXT)")
            now = dt.datetime.now(dt.timezone.utc).isoformat()
            db.executemany("INSERT INTO accounts VALUES (?, ?, ?)", [(u, t, now) for u, t in traffic.accounts(self.people)])

    def start(self) -> None:
        self.progress.step("starting the Tansu broker and the fakesnow server …")
        self.stack.up(["kafka", "snowflake"], require_external=False)
        self.progress.step(f"broker on 127.0.0.1:{self.stack.ports['kafka']}, fakesnow on "
                           f"127.0.0.1:{self.stack.ports['snowflake']}")
        self.procs["gateway"] = self._spawn("gateway", ["gateway", "--host", "127.0.0.1", "--port",
                                                        str(self.gateway_port), "--workers", "1"])
        self.procs["flow"] = self._spawn("flow", ["flow", "-r", str(self.root / "recovery"), "-s", "2", "-b", "30"])
        self._wait_http(f"{self.gateway_url}/readyz", "gateway", 60)
        self.progress.step(f"gateway ready at {self.gateway_url}")
        self._wait_http(self.flow_metrics_url, "flow", 90)
        self.progress.step(f"flow running (metrics at {self.flow_metrics_url})")

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        env = {**os.environ, **self.env}
        for key in [k for k, v in env.items() if k.startswith("HEADWATER_") and v == ""]:
            del env[key]
        log = open(self.root / "logs" / f"{name}.log", "ab")
        return subprocess.Popen([sys.executable, "-m", "headwater", *args], env=env, cwd=self.root,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _wait_http(self, url: str, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.root / 'logs' / (name + '.log')}:\n"
                                   + _tail(self.root / "logs" / f"{name}.log"))
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{name} did not answer at {url} within {timeout:.0f} s; see "
                           f"{self.root / 'logs' / (name + '.log')}")

    # --- traffic ------------------------------------------------------------------------------------------------
    def send(self) -> None:
        from headwater_client import AnalyticsClient, AnalyticsEmitter

        rng = random.Random(self.cfg.seed)
        people = self.people
        # Opt-outs are recorded per device, so they cover the device's anonymous events as well.
        opted_out = set(p.device_id for p in rng.sample(people, max(1, len(people) // 50)))
        never_consented = set(p.device_id for p in rng.sample(people, max(1, len(people) // 50))) - opted_out
        for device_id in sorted(opted_out):
            self._admin("POST", f"/analytics/optout/{device_id}")
        self.progress.step(f"sending traffic from {len(people)} people through the client SDK "
                           f"({len(opted_out)} opted out at the gateway, {len(never_consented)} never consented)")
        t = self.tally
        for n, person in enumerate(people, 1):
            client = AnalyticsClient(
                url=self.gateway_url, device_id=person.device_id, kid=DEMO_KID, master_key=self.master_key,
                queue_path=self.root / "sdk" / f"{person.device_id}.sqlite3", anonymous_id=person.anonymous_id,
                app_version=person.app_version, locale=person.locale, experiments=person.experiments,
                consent=person.device_id not in never_consented, flush_interval=0)
            try:
                events = traffic.session(person, rng, rng.randint(self.cfg.session_min, self.cfg.session_max))
                if rng.random() < 0.12:
                    events.insert(rng.randrange(len(events) + 1), traffic.invalid_event(rng))
                sent: list[tuple[str, traffic.ClientEvent]] = []
                for ev in events:
                    event_id = client.track(ev.name, ev.properties,
                                            user_id=person.user_id if ev.signed_in else None,
                                            context=person.context())
                    t.tracked += 1
                    if ev.name == "identify":
                        t.pii_planted += [person.email, person.phone, person.name]
                    sent.append((event_id, ev))
                result = client.flush(timeout=30)
                t.answers.add(result)
                rejected_ids = {r.get("event_id") for r in result.rejected}
                if person.device_id not in opted_out and person.device_id not in never_consented:
                    t.accepted_ids.update(eid for eid, ev in sent if eid not in rejected_ids)
                t.not_captured += client.stats.get("dropped_no_consent", 0)
                # An app that crashed before it recorded the answer sends a few events again, with their ids.
                if n % 15 == 0 and sent and person.device_id not in never_consented | opted_out:
                    for eid, ev in sent[:3]:
                        client.track(ev.name, ev.properties, user_id=person.user_id if ev.signed_in else None,
                                     context=person.context(), event_id=eid)
                        t.resent += 1
                    t.answers.add(client.flush(timeout=30))
            finally:
                client.close()
            a = t.answers
            self.progress.status(f"{n}/{len(people)} people · {t.tracked} events tracked · {a.accepted} accepted · "
                                 f"{len(a.rejected)} rejected · {a.duplicates} duplicates")
        self.progress.status(f"{len(people)}/{len(people)} people · {t.tracked} events tracked", force=True)
        self._send_server_events(AnalyticsEmitter, rng)
        self._idempotent_retry()
        self._produce_past_the_gateway()

    def _send_server_events(self, emitter_cls: Callable[..., Any], rng: random.Random) -> None:
        emitter = emitter_cls(url=self.gateway_url, service="billing", kid=DEMO_KID, master_key=self.master_key,
                              queue_path=self.root / "sdk" / "svc-billing.sqlite3", flush_interval=0)
        t = self.tally
        try:
            for ev in traffic.server_events(self.people, rng, self.cfg.server_events):
                event_id = getattr(emitter, ev.method)(**ev.kwargs)
                t.tracked += 1
                if ev.kwargs.get("billing_email"):
                    t.pii_planted.append(ev.kwargs["billing_email"])
                if event_id:
                    t.accepted_ids.add(event_id)
            result = emitter.flush(timeout=60)
            t.answers.add(result)
            t.accepted_ids.difference_update(r.get("event_id") for r in result.rejected)
        finally:
            emitter.close()
        self.progress.step(f"server-side emitter sent {self.cfg.server_events} domain events (billing, automation, "
                           f"moderation)")

    def _idempotent_retry(self) -> None:
        """A request retried with its Idempotency-Key after a lost answer: the gateway answers from the first
        response and publishes nothing again."""
        import gzip

        from ingest_gateway.signing import sign_request

        person = self.people[0]
        event = {"event": "screen_viewed", "event_id": str(uuid.uuid4()), "user_id": person.user_id,
                 "device_id": person.device_id, "timestamp": _now(), "properties": {"screen_name": "Settings"}}
        body = gzip.compress(json.dumps({"sent_at": _now(), "batch": [event]}).encode())
        key = str(uuid.uuid4())
        answers = []
        for _ in range(2):
            headers = {**sign_request(body, person.device_id, DEMO_KID, self.master_key), "Idempotency-Key": key,
                       "Content-Type": "application/json", "Content-Encoding": "gzip"}
            req = urllib.request.Request(f"{self.gateway_url}/analytics/collect", data=body, headers=headers,
                                         method="POST")
            with urllib.request.urlopen(req, timeout=10) as resp:
                answers.append((resp.status, resp.headers.get("Idempotent-Replayed"), json.loads(resp.read())))
        if answers[0][2].get("accepted") == 1:
            self.tally.answers.accepted += 1
            self.tally.accepted_ids.add(event["event_id"])
        if answers[1][1] == "true":
            self.tally.idempotent_replays += 1

    def _produce_past_the_gateway(self) -> None:
        """Records that skipped the gateway (an old producer): the flow re-validates and dead-letters them."""
        from confluent_kafka import Producer

        from schemas.wire import RawRecord

        bad = [
            {"event": "page_viewed", "event_id": str(uuid.uuid4()), "timestamp": _now(), "user_id": "usr_legacy",
             "properties": {"url": "not a url", "path": "pricing"}},
            {"event": "payment_failed", "event_id": str(uuid.uuid4()), "timestamp": _now(), "user_id": "usr_legacy",
             "properties": {"payment_id": "pay_1", "amount_minor": -100, "currency": "euro",
                            "failure_code": "card_declined", "attempt_number": 1}},
        ]
        producer = Producer({"bootstrap.servers": self.env["HEADWATER_KAFKA_BROKERS"], "acks": "all"})
        for event in bad:
            record = RawRecord(event=event, received_at=_now(), gateway_id="legacy-producer", source="native")
            producer.produce("analytics.events.raw", record.encode(), key=record.key, headers=record.headers())
        producer.produce("analytics.events.raw", b"{not json", key=b"usr_legacy")
        producer.flush(10)
        self.tally.direct_records = len(bad) + 1
        self.progress.step(f"produced {self.tally.direct_records} malformed records straight into "
                           f"analytics.events.raw (past the gateway) to show the dead-letter path")

    def _admin(self, method: str, path: str) -> int:
        req = urllib.request.Request(f"{self.gateway_url}{path}", method=method,
                                     headers={"Authorization": f"Bearer {self.admin_token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status

    # --- waiting -------------------------------------------------------------------------------------------------
    def wait_for_drain(self) -> dict:
        expected = len(self.tally.accepted_ids)
        self.progress.step(f"waiting for the flow to deliver {expected} events to {', '.join(SINKS)} …")
        deadline = time.monotonic() + self.cfg.drain_timeout
        samples: dict = {}
        while time.monotonic() < deadline:
            if self.procs["flow"].poll() is not None:
                raise RuntimeError("the flow exited early; see " + str(self.root / "logs" / "flow.log") + "\n"
                                   + _tail(self.root / "logs" / "flow.log"))
            samples = scrape(self.flow_metrics_url) or samples
            written = {s: sample(samples, "analytics_sink_rows_total", sink=s, result="written") for s in SINKS}
            letters = sample(samples, "analytics_flow_events_total", stage="dead_letter", result="out")
            self.progress.status("  ".join(f"{s} {int(v)}/{expected}" for s, v in written.items())
                                 + f"  dead letters {int(letters)}/{self.tally.direct_records}")
            if all(v >= expected for v in written.values()) and letters >= self.tally.direct_records:
                self.progress.status("  ".join(f"{s} {int(v)}/{expected}" for s, v in written.items())
                                     + f"  dead letters {int(letters)}", force=True)
                self.progress.step("drained")
                return samples
            time.sleep(0.5)
        self.progress.step(f"the pipeline did not drain within {self.cfg.drain_timeout:.0f} s; summarising what "
                           f"arrived")
        return samples

    # --- the end ---------------------------------------------------------------------------------------------
    def stop(self) -> None:
        self.stop_processes()
        self.stop_services()

    def stop_services(self) -> None:
        if self.stack is not None:
            self.stack.down()

    def stop_processes(self) -> None:
        from headwater.procs import stop_process_group

        for name in ("flow", "gateway"):
            if name in self.procs:
                stop_process_group(self.procs[name], signal.SIGINT if name == "flow" else signal.SIGTERM)

    def write_env_file(self) -> Path:
        """``export`` lines for every setting of this demo, secrets included (they are throw-away keys made for
        this run), so that ``headwater smoke``, ``replay`` or ``quality`` can be pointed at it."""
        import shlex

        path = self.root / "demo.env"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            for key, value in sorted(self.env.items()):
                if value != "" and key.startswith("HEADWATER_"):
                    fh.write(f"export {key}={shlex.quote(value)}\n")
        return path

    def write_run_file(self) -> Path:
        path = self.root / "running.json"
        path.write_text(json.dumps({
            "gateway_url": self.gateway_url, "flow_metrics_url": self.flow_metrics_url,
            "pids": {n: p.pid for n, p in self.procs.items()}, "stack": str(self.root / "stack"),
            "env": {k: v for k, v in self.env.items() if k not in ("HEADWATER_HMAC_KEYS", "HEADWATER_ADMIN_TOKEN",
                                                                    "HEADWATER_PII_SALTS")},
        }, indent=2))
        return path

    def run(self) -> int:
        try:
            self.prepare()
            self.start()
            gateway_before = scrape(f"{self.gateway_url}/metrics")
            self.send()
            flow_samples = self.wait_for_drain()
            gateway_samples = scrape(f"{self.gateway_url}/metrics")
            self.letters = read_dead_letters(self.env["HEADWATER_KAFKA_BROKERS"])  # the broker keeps them in memory
            if not self.cfg.keep_running:
                self.progress.step("stopping the flow and the gateway")
                self.stop_processes()
            summary = Summary(self, gateway_before, gateway_samples, flow_samples)
            ok = summary.print()
            if not self.cfg.keep_running:
                self.stop_services()
            if self.cfg.keep_running:
                run_file, env_file = self.write_run_file(), self.write_env_file()
                print(f"\nStill running (--keep-running). Gateway {self.gateway_url}, flow metrics "
                      f"{self.flow_metrics_url}.\nPoint other commands at it with: source {env_file}\n"
                      f"  e.g. headwater smoke --url {self.gateway_url} --sinks lake,snowflake   (chdb is held by the "
                      f"flow)\nStop everything with: headwater demo --stop  (state in {run_file})", file=self.out)
            return EXIT_OK if ok else EXIT_MISMATCH
        except KeyboardInterrupt:
            self.stop()
            return EXIT_ERROR
        except Exception as exc:
            print(f"\ndemo failed: {exc}", file=sys.stderr)
            self.stop()
            return EXIT_ERROR


class Summary:
    """Everything the demo shows at the end, read from the sinks, the audit store and the dead-letter topic."""

    def __init__(self, demo: Demo, gateway_before: dict, gateway_after: dict, flow: dict):
        self.demo = demo
        self.gw_before, self.gw, self.flow = gateway_before, gateway_after, flow

    def _gw(self, result: str) -> int:
        name = "analytics_ingest_events_total"
        return int(sample(self.gw, name, result=result) - sample(self.gw_before, name, result=result))

    def print(self) -> bool:
        t, out = self.demo.tally, self.demo.out
        expected = len(t.accepted_ids)
        p = lambda *a: print(*a, file=out)  # noqa: E731
        p("\n" + "=" * 78)
        p("Headwater demo: summary")
        p("=" * 78)
        p(f"client SDK      tracked {t.tracked} events; {t.not_captured} not captured (no consent on the device); "
          f"{t.resent} re-sent after a simulated crash")
        p(f"gateway         accepted {self._gw('accepted')}  rejected {self._gw('rejected')}  "
          f"duplicate {self._gw('duplicate')}  no_consent {self._gw('no_consent')}  "
          f"(idempotent retries answered from the first response: {t.idempotent_replays})")
        reasons = self._rejection_reasons()
        if reasons:
            p("  rejected at the gateway (audit store, no payloads kept):")
            for reason, n in reasons[:6]:
                p(f"    {n:4d} × {reason}")
        letters = self.demo.letters
        p(f"flow            dead letters on analytics.events.invalid: {len(letters)}")
        for stage, event, reason in letters[:5]:
            p(f"    [{stage}] {event or '-'}: {reason}")

        counts, ok = self._sink_counts()
        p(f"\nsinks           expected {expected} events in each (every event the gateway accepted)")
        for c in counts:
            if c.error:
                p(f"  {c.sink:11s} could not be read: {c.error}")
                continue
            mark = "ok" if c.rows == expected and c.distinct_event_ids == expected else "MISMATCH"
            p(f"  {c.sink:11s} rows {c.rows:6d}  distinct event ids {c.distinct_event_ids:6d}   {mark}")
        for s in SINKS:
            lag = self.flow.get(("analytics_pipeline_lag_seconds", (("sink", s),)))
            if lag is not None:
                p(f"  {s:11s} pipeline lag at drain: {lag:.2f} s")
        self._samples(p)
        leaks = self._pii_leaks()
        p(f"\nPII check       {len(set(t.pii_planted))} raw emails, phones and names were sent; found in the lake or the logs: "
          f"{leaks if leaks is not None else 'not checked'}")
        if leaks:
            ok = False
        self._where_next(p)
        return ok

    def _rejection_reasons(self) -> list[tuple[str, int]]:
        db = self.demo.root / "data" / "gateway" / "gateway.sqlite3"
        if not db.exists():
            return []
        counts: dict[str, int] = {}
        with sqlite3.connect(db) as conn:
            for event_name, reasons in conn.execute("SELECT event_name, reasons FROM analytics_rejected_events"):
                try:
                    first = json.loads(reasons)[0]
                except (ValueError, IndexError, TypeError):
                    first = str(reasons)
                key = f"{event_name}: {first}"
                counts[key] = counts.get(key, 0) + 1
        return sorted(counts.items(), key=lambda kv: -kv[1])

    def _settings(self) -> Any:
        from headwater.settings import load_settings

        env = {k: v for k, v in self.demo.env.items() if v != ""}
        return load_settings(env)

    def _sink_counts(self) -> tuple[list, bool]:
        from headwater.sinkcheck import SinkReader

        expected = len(self.demo.tally.accepted_ids)
        if self.demo.cfg.keep_running:
            # chdb allows one process per database path, and the running flow holds it: report what was written.
            counts = []
            with SinkReader(self._settings(), sinks=("lake", "snowflake")) as reader:
                counts = [reader.count("lake"), reader.count("snowflake")]
            from headwater.sinkcheck import SinkCount
            written = int(sample(self.flow, "analytics_sink_rows_total", sink="clickhouse", result="written"))
            counts.insert(1, SinkCount("clickhouse", written, written))
        else:
            with SinkReader(self._settings()) as reader:
                counts = [reader.count(s) for s in SINKS]
        ok = all(c.error is None and c.rows == expected and c.distinct_event_ids == expected for c in counts)
        self._counts = counts
        return counts, ok

    def _samples(self, p: Callable[..., None]) -> None:
        from headwater.sinkcheck import SinkReader

        ids = sorted(self.demo.tally.accepted_ids)
        if not ids:
            return
        sink = "snowflake" if self.demo.cfg.keep_running else "clickhouse"
        columns = ["event", "user_id", "pii_salt_id", "country", "city", "plan_tier", "browser", "os",
                   "device_class", "ip_truncated", "properties"]
        try:
            with SinkReader(self._settings(), sinks=(sink,)) as reader:
                rows = reader.rows(sink, ids[:400], columns)
        except Exception as exc:
            p(f"\n(sample rows unavailable: {exc})")
            return
        picked = [r for r in rows if r["event"] == "identify"][:1] + \
                 [r for r in rows if r["event"] != "identify" and r.get("country")][:2]
        p(f"\nsample rows ({sink}): PII hashed under the quarter's salt, geo and plan tier filled")
        for row in picked:
            props = row.get("properties")
            if isinstance(props, str):
                props = json.loads(props)
            shown = {k: (v[:16] + "…" if isinstance(v, str) and len(v) > 20 else v) for k, v in (props or {}).items()}
            p(f"  {row['event']:15s} user {row['user_id']}  salt {row['pii_salt_id']}  {row['city']}, "
              f"{row['country']}  ip {row['ip_truncated']}  plan {row['plan_tier']}  {row['browser']}/{row['os']}"
              f"/{row['device_class']}")
            p(f"  {'':15s} properties {json.dumps(shown, ensure_ascii=False)}")

    def _pii_leaks(self) -> int | None:
        """How many of the raw PII strings sent show up in the lake's rows or in any process log."""
        planted = {v for v in self.demo.tally.pii_planted if v}
        if not planted:
            return None
        found = set()
        for path in (self.demo.root / "lake").rglob("*.parquet"):
            import pyarrow.parquet as pq

            text = json.dumps(pq.read_table(path).to_pylist(), default=str)
            found |= {v for v in planted if v in text}
        for path in (self.demo.root / "logs").glob("*.log"):
            text = path.read_text(errors="replace")
            found |= {v for v in planted if v in text}
        return len(found)

    def _where_next(self, p: Callable[..., None]) -> None:
        d = self.demo
        p("\nwhere to look next")
        p(f"  lake           {d.root / 'lake' / 'events'}  (Parquet, event_date=YYYY-MM-DD partitions)")
        p(f"                 python -c \"import pyarrow.dataset as ds; print(ds.dataset('{d.root / 'lake' / 'events'}',"
          f" partitioning='hive').to_table().group_by('event').aggregate([('event_id','count')]))\"")
        p(f"  ClickHouse     chdb at {d.root / 'chdb'}:  SELECT event, count() FROM analytics.events FINAL GROUP BY event")
        p("  Snowflake      ANALYTICS.PUBLIC.EVENTS on the fakesnow server (connector: user headwater, password fakesnow)")
        p(f"  logs           {d.root / 'logs'}")
        if d.cfg.keep_running:
            p(f"  metrics        {d.gateway_url}/metrics (gateway), {d.flow_metrics_url} (flow)")
        else:
            p("  metrics        run again with --keep-running to scrape the gateway's /metrics and the flow's :PORT/metrics")


def read_dead_letters(brokers: str, topic: str = "analytics.events.invalid",
                      timeout: float = 10.0) -> list[tuple[str, str | None, str]]:
    """``(stage, event, first reason)`` of every dead letter on ``topic``, read from the beginning to the end."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": brokers, "group.id": f"demo-{uuid.uuid4()}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    out = []
    try:
        partitions = consumer.list_topics(topic, timeout=timeout).topics[topic].partitions
        parts = [TopicPartition(topic, i, OFFSET_BEGINNING) for i in partitions]
        consumer.assign(parts)
        eof, deadline = set(), time.monotonic() + timeout
        while len(eof) < len(parts) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                eof.add(msg.partition())
                continue
            letter = json.loads(msg.value())
            reason = letter["reasons"][0] if letter.get("reasons") else {}
            text = f"{reason.get('path')}: {reason.get('message')}" if reason.get("path") else reason.get("message", "")
            out.append((letter.get("stage"), letter.get("event"), text))
    finally:
        consumer.close()
    return out


def stop_running(workdir: Path) -> int:
    """Stop what ``headwater demo --keep-running`` left running."""
    from headwater.devstack import Devstack

    root = Path(workdir).resolve()
    state = root / "running.json"
    if not state.exists():
        print(f"nothing to stop: {state} does not exist")
        return EXIT_OK
    info = json.loads(state.read_text())
    pids = info.get("pids", {})
    for name, pid in pids.items():
        with _suppress():
            os.killpg(pid, signal.SIGINT if name == "flow" else signal.SIGTERM)
    deadline = time.monotonic() + 20
    for name, pid in pids.items():
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            with _suppress():
                os.killpg(pid, signal.SIGKILL)
        print(f"stopped {name} (pid {pid})")
    Devstack(root=Path(info["stack"])).down()
    state.unlink()
    return EXIT_OK


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        return exc_type is not None and issubclass(exc_type, (OSError, ProcessLookupError))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie of ours counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="run the whole pipeline on the embedded defaults with synthetic traffic, then summarise",
        description="Start a broker, the gateway, the flow, a local Parquet lake, chdb and a fakesnow server under "
                    "var/demo/; send realistic traffic through the Python client SDK; wait until every sink has "
                    "it; print what arrived where. Exit status 0 when every sink holds every accepted event "
                    "exactly once, 1 when they disagree, 2 when the demo could not run.")
    p.add_argument("--workdir", type=Path, default=Path("var/demo"), help="where everything lives (wiped first)")
    p.add_argument("--users", type=int, default=150, help="people in the synthetic population (default 150)")
    p.add_argument("--server-events", type=int, default=300, help="server-side domain events (default 300)")
    p.add_argument("--seed", type=int, default=42, help="random seed of the traffic")
    p.add_argument("--gateway-port", type=int, default=0, help="gateway port (default: a free one)")
    p.add_argument("--drain-timeout", type=float, default=180.0, help="seconds to wait for the sinks")
    p.add_argument("--keep-running", action="store_true", help="leave the pipeline running afterwards")
    p.add_argument("--stop", action="store_true", help="stop what an earlier --keep-running left running")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.stop:
        return stop_running(args.workdir)
    if args.users < 1:
        print("--users must be at least 1", file=sys.stderr)
        return EXIT_ERROR
    cfg = DemoConfig(workdir=args.workdir, users=args.users, server_events=args.server_events, seed=args.seed,
                     gateway_port=args.gateway_port, keep_running=args.keep_running, drain_timeout=args.drain_timeout)
    return Demo(cfg).run()
