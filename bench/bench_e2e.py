"""End-to-end latency: from the gateway accepting an event to the event being visible in each sink.

Usage::

    python -m bench.bench_e2e [--rate EVENTS_PER_S] [--duration S] [--runs R] [--json]

What runs, all against the devstack (``headwater devstack up``):

- ``headwater gateway`` (one worker, signatures required, Redis dedup) and ``headwater flow`` writing to all three
  sinks, as an operator starts them, with ``-s`` (the epoch, which is when the sinks flush) set by
  ``--epoch-seconds``; each gets private places so that nothing else running on the shared stack is read or
  disturbed: raw/rejected/invalid topics, a ClickHouse database, a Snowflake schema, a lake prefix and a plan-tier
  table, all named ``…bench_e2e_<random>`` and removed afterwards;
- a steady open-loop load of signed, gzipped 50-event batches from :mod:`headwater.traffic` people (one device
  per batch, its realistic session), sent at fixed times whatever the answers do; the accept time of each event is
  when the gateway's 2xx answer arrived (the gateway answers after Kafka acknowledged it);
- one poller per sink reading the event ids it holds that were received since the oldest event it still waits
  for (ClickHouse and Snowflake by query, the lake through its Parquet dataset): an event's visible time is the
  start of the first poll that returned it, so the figure is an upper bound, off by at most one poll (each sink's
  median poll time is reported).

A warm-up batch goes first and must be visible everywhere (tables created, clients connected) before the clock
starts; then ``--runs`` measured windows follow on the same processes, each drained before the next. Per sink and
run: p50/p95/p99/max latency in seconds and how many events never arrived within ``--drain-timeout``.
``main(argv)`` returns the figures as a dict, for ``headwater bench``.
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import gzip
import http.client
import json
import math
import os
import random
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.bench_gateway import wait_ready  # noqa: E402 (after the path set-up)
from headwater.procs import stop_process_group  # noqa: E402

SINKS = ("clickhouse", "snowflake", "lake")
EVENTS_PER_BATCH = 50
KID = "bench-e2e"
PARTITIONS = 4
DEVSTACK_DEFAULTS = {
    "HEADWATER_KAFKA_BROKERS": "127.0.0.1:29092",
    "HEADWATER_S3_URL": "s3://headwater-lake",
    "HEADWATER_S3_ENDPOINT_URL": "http://127.0.0.1:29000",
    "HEADWATER_S3_ACCESS_KEY_ID": "testing",
    "HEADWATER_S3_SECRET_ACCESS_KEY": "testing",
    "HEADWATER_SNOWFLAKE_URL": "snowflake://headwater@fakesnow/ANALYTICS/PUBLIC?host=127.0.0.1&port=29100&protocol=http",
    "HEADWATER_SNOWFLAKE_PASSWORD": "fakesnow",
    "HEADWATER_CLICKHOUSE_URL": "clickhouse://127.0.0.1:29001/analytics",
    "HEADWATER_REDIS_URL": "redis://127.0.0.1:6379/0",
    "HEADWATER_POSTGRES_URL": "postgresql://postgres@127.0.0.1:5432/test",
}


def percentile(values: Sequence[float], p: float) -> float | None:
    """The ``p`` quantile (0–1) of ``values`` by nearest rank; ``None`` when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p * len(ordered)) - 1))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- where everything goes ------------------------------------------------------------------------------------
def _with_path(url: str, path: str) -> str:
    """``url`` with its path replaced (query kept): the private ClickHouse database / Snowflake schema."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


def private_env(base: dict[str, str], suffix: str, work: Path, master_key: bytes, geo_db: Path,
                table: str) -> dict[str, str]:
    """``HEADWATER_*`` settings for the gateway and the flow: the devstack's services, private names in them."""
    from headwater.settings import quarter_of

    salt = base64.b64encode(secrets.token_bytes(32)).decode()
    env = dict(base)
    env.update({
        "HEADWATER_KAFKA_TOPIC_RAW": f"bench.e2e.raw.{suffix}",
        "HEADWATER_KAFKA_TOPIC_REJECTED": f"bench.e2e.rejected.{suffix}",
        "HEADWATER_KAFKA_TOPIC_INVALID": f"bench.e2e.invalid.{suffix}",
        "HEADWATER_CLICKHOUSE_URL": _with_path(env["HEADWATER_CLICKHOUSE_URL"], f"/bench_e2e_{suffix}"),
        "HEADWATER_SNOWFLAKE_URL": _with_path(env["HEADWATER_SNOWFLAKE_URL"], f"/ANALYTICS/BENCH_E2E_{suffix.upper()}"),
        "HEADWATER_S3_URL": f"{env['HEADWATER_S3_URL'].rstrip('/')}/bench-e2e-{suffix}",
        "HEADWATER_PLAN_TIER_TABLE": table,
        "HEADWATER_HMAC_KEYS": f"{KID}:{base64.b64encode(master_key).decode()}",
        "HEADWATER_PII_SALTS": f"{quarter_of(dt.datetime.now(dt.timezone.utc).date())}:{salt}",
        "HEADWATER_GEOIP_DB": str(geo_db),
        "HEADWATER_DATA_DIR": str(work / "data"),
        "HEADWATER_GATEWAY_ID": "gw-bench-e2e",
        "HEADWATER_LOG_LEVEL": "WARNING",
        "HEADWATER_FLOW_OUTPUTS": "all",
    })
    return env


def devstack_env() -> dict[str, str]:
    """The devstack's settings (what ``headwater devstack up --env`` prints), overridden by ``HEADWATER_*`` in the
    environment; the stack must be up."""
    env = dict(DEVSTACK_DEFAULTS)
    try:
        from headwater.devstack import Devstack

        env.update(Devstack().env())
    except Exception:  # the defaults are the devstack's default ports
        pass
    env.update({k: v for k, v in os.environ.items() if k.startswith("HEADWATER_") and k in DEVSTACK_DEFAULTS})
    return env


# --- the load --------------------------------------------------------------------------------------------------
class Batch:
    """One request: a person's device, 50 events, the gzipped body; what the gateway answered, and when."""

    __slots__ = ("device_id", "event_ids", "body", "accepted_at", "accepted_ids", "error")

    def __init__(self, device_id: str, events: list[dict[str, Any]]):
        import orjson

        self.device_id = device_id
        self.event_ids = [e["event_id"] for e in events]
        sent_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        self.body = gzip.compress(orjson.dumps({"sent_at": sent_at, "batch": events}), 6, mtime=0)
        self.accepted_at: float | None = None
        self.accepted_ids: list[str] = []
        self.error: str | None = None


def build_batches(people: list[Any], count: int, seed: int) -> list[Batch]:
    """``count`` batches of 50 schema-valid events, each one person's session on their device."""
    from headwater import traffic

    rng = random.Random(seed)
    now = dt.datetime.now(dt.timezone.utc)
    batches = []
    for i in range(count):
        person = people[i % len(people)]
        events = []
        for j, ev in enumerate(traffic.session(person, rng, EVENTS_PER_BATCH)):
            when = now + dt.timedelta(milliseconds=j)
            event: dict[str, Any] = {
                # fresh ids every time: the gateway remembers ids (Redis) and would answer "duplicate"
                "event": ev.name, "event_id": str(uuid.uuid4()),
                "timestamp": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "anonymous_id": person.anonymous_id, "device_id": person.device_id, "properties": ev.properties,
                "context": {**person.context(), "app": {"name": "Acme", "version": person.app_version},
                            "locale": person.locale, "experiments": person.experiments},
            }
            if ev.signed_in:
                event["user_id"] = person.user_id
            events.append(event)
        batches.append(Batch(person.device_id, events[:EVENTS_PER_BATCH]))
    return batches


class Sender:
    """Sends batches at fixed times over keep-alive connections (a thread pool; each thread its own connection)."""

    def __init__(self, port: int, master_key: bytes, threads: int = 8):
        self.port = port
        self.master_key = master_key
        self._accepted: dict[str, float] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="e2e-send")

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self._local.conn = conn
        return conn

    def send(self, batch: Batch) -> Batch:
        from ingest_gateway.signing import sign_request

        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip",
                   **sign_request(batch.body, batch.device_id, KID, self.master_key)}
        for attempt in (1, 2):  # a keep-alive connection the server closed is reopened once
            conn = self._connection()
            try:
                conn.request("POST", "/analytics/collect", batch.body, headers)
                response = conn.getresponse()
                payload = response.read()
                answered = time.time()
                break
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    batch.error = f"{type(exc).__name__}: {exc}"
                    return batch
        if response.status // 100 != 2:
            batch.error = f"HTTP {response.status}: {payload[:300]!r}"
            return batch
        answer = json.loads(payload)
        refused = {r.get("index") for r in answer.get("rejected", [])}
        accepted = [eid for i, eid in enumerate(batch.event_ids) if i not in refused]
        if answer.get("accepted") != len(accepted):  # duplicates or no consent: which ones is not said
            batch.error = f"gateway accepted {answer.get('accepted')} of {len(batch.event_ids)}: {answer}"
            return batch
        batch.accepted_at = answered
        batch.accepted_ids = accepted
        with self._lock:
            self._accepted.update(dict.fromkeys(accepted, answered))
        return batch

    def oldest_unseen(self, seen: dict[str, float]) -> float | None:
        """The earliest accept time among events not in ``seen`` (``None``: all seen)."""
        with self._lock:
            pending = [at for eid, at in self._accepted.items() if eid not in seen]
        return min(pending, default=None)

    def offer(self, batches: list[Batch], rate_events: float) -> float:
        """Send ``batches`` open-loop at ``rate_events`` events/s; returns once every answer is in (seconds taken)."""
        interval = EVENTS_PER_BATCH / rate_events
        t0 = time.time()
        futures = []
        for n, batch in enumerate(batches):
            delay = t0 + n * interval - time.time()
            if delay > 0:
                time.sleep(delay)
            futures.append(self._pool.submit(self.send, batch))
        for f in futures:
            f.result()
        return time.time() - t0

    def close(self) -> None:
        self._pool.shutdown(wait=True)


# --- the pollers -----------------------------------------------------------------------------------------------
class SinkPoller:
    """Reads the event ids ``sink`` holds, over and over, and notes when each was first seen.

    A poll asks only for rows received since the oldest accepted event this poller has not seen yet (less
    ``MARGIN_S``: the gateway stamps ``received_at`` just before it answers, and ClickHouse 18.16 keeps whole
    seconds), so its cost follows what is in flight, not the size of the table; on a machine this small the polls
    would otherwise compete with the pipeline they measure.

    :param since: ``first_seen`` → the accept time of the oldest event still missing, ``None`` when none is
    """

    MARGIN_S = 3.0

    def __init__(self, settings: Any, sink: str, since: Callable[[dict[str, float]], float | None],
                 min_interval: float = 0.2):
        from headwater.sinkcheck import SinkReader

        self.sink = sink
        self.reader = SinkReader(settings, [sink])
        self.since = since
        self.min_interval = min_interval
        self.first_seen: dict[str, float] = {}
        self.poll_seconds: list[float] = []
        self.errors = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"poll-{sink}", daemon=True)

    def start(self) -> SinkPoller:
        self._thread.start()
        return self

    def _ids(self, since: float) -> list[str]:
        w = self.reader.writer(self.sink)
        if self.sink == "lake":
            import pyarrow as pa
            import pyarrow.dataset as ds

            bound = pa.scalar(dt.datetime.fromtimestamp(since, dt.timezone.utc), pa.timestamp("us", tz="UTC"))
            try:
                table = w.dataset().to_table(columns=["event_id"], filter=ds.field("received_at") >= bound)
            except FileNotFoundError:  # nothing written yet
                return []
            return table.column("event_id").to_pylist()
        if self.sink == "clickhouse":
            return [r[0] for r in w.query(f"SELECT event_id FROM {w.qualified_table} "
                                          f"WHERE received_at >= toDateTime({int(since)})")]
        iso = dt.datetime.fromtimestamp(since, dt.timezone.utc).isoformat()
        return [r[0] for r in w.query(f"SELECT EVENT_ID FROM {w.table} WHERE RECEIVED_AT >= TO_TIMESTAMP_TZ('{iso}')")]

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.time()
            oldest = self.since(self.first_seen)
            if oldest is None:  # nothing in flight
                self._stop.wait(self.min_interval)
                continue
            try:
                ids = self._ids(oldest - self.MARGIN_S)
            except Exception as exc:  # tables appear with the first write; a lake read may race a rewrite
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                self._stop.wait(self.min_interval)
                continue
            self.poll_seconds.append(time.time() - started)
            for event_id in ids:
                self.first_seen.setdefault(str(event_id), started)
            self._stop.wait(max(0.0, self.min_interval - (time.time() - started)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self.reader.close()


def _wait_visible(pollers: list[SinkPoller], ids: list[str], timeout: float) -> dict[str, int]:
    """Wait until every poller has seen every id, or ``timeout``; missing count per sink."""
    deadline = time.monotonic() + timeout
    while True:
        missing = {p.sink: sum(1 for i in ids if i not in p.first_seen) for p in pollers}
        if not any(missing.values()) or time.monotonic() > deadline:
            return missing
        time.sleep(0.2)


# --- processes ---------------------------------------------------------------------------------------------------
def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "headwater", *args], cwd=REPO, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _create_topics(brokers: str, names: list[str]) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": brokers})
    for future in admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names]).values():
        future.result(15)


def _cleanup(env: dict[str, str], table: str, say: Any) -> None:
    """Remove every private place; each step on its own, so one failure does not leave the rest behind."""
    from headwater.settings import load_settings
    from headwater.sinkcheck import SinkReader

    def attempt(what: str, step: Any) -> None:
        try:
            step()
        except Exception as exc:
            say(f"e2e: cleanup of {what} failed: {type(exc).__name__}: {exc}")

    settings = load_settings(env)
    with SinkReader(settings) as reader:
        attempt("the ClickHouse database", lambda: reader.writer("clickhouse").query(
            f"DROP DATABASE IF EXISTS `{reader.writer('clickhouse').target.database}`"))

        def drop_snowflake() -> None:
            w = reader.writer("snowflake")
            for name in ("EVENTS", "EVENTS_STAGING"):
                w.query(f"DROP TABLE IF EXISTS {w.target.qualified(name)}")
            w.query(f"DROP SCHEMA IF EXISTS {w.target.database}.{w.target.schema}")
        attempt("the Snowflake schema", drop_snowflake)

        def drop_lake() -> None:
            w = reader.writer("lake")
            root = settings.s3_url.split("://", 1)[1]
            if w.filesystem.exists(root):
                w.filesystem.rm(root, recursive=True)
        attempt("the lake prefix", drop_lake)

    def drop_topics() -> None:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": env["HEADWATER_KAFKA_BROKERS"]})
        topics = [env[k] for k in ("HEADWATER_KAFKA_TOPIC_RAW", "HEADWATER_KAFKA_TOPIC_REJECTED",
                                   "HEADWATER_KAFKA_TOPIC_INVALID")]
        for future in admin.delete_topics(topics).values():
            future.result(15)
    attempt("the topics", drop_topics)

    def drop_table() -> None:
        import psycopg

        with psycopg.connect(env["HEADWATER_POSTGRES_URL"], autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
    attempt("the plan-tier table", drop_table)


def _accounts(postgres_url: str, people: list[Any], table: str) -> None:
    """The plan-tier table the flow reads, for ``people``."""
    import psycopg

    from headwater import traffic

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (user_id text primary key, plan_tier text, updated_at timestamptz)")
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {table} VALUES (%s, %s, now())", traffic.accounts(people))


def _geo_database(work: Path) -> Path:
    from geoip.build import build_city_database

    ranges = REPO / "geoip" / "data" / "demo-cities.csv"  # covers headwater.traffic's addresses
    if not ranges.exists():
        ranges = REPO / "tests" / "data" / "geoip_test.csv"
    return build_city_database(ranges, work / "city.mmdb")


# --- one measured window -----------------------------------------------------------------------------------------
def _measure(sender: Sender, pollers: list[SinkPoller], batches: list[Batch], rate: float,
             drain_timeout: float) -> dict[str, Any]:
    offered_for = sender.offer(batches, rate)
    sent = [b for b in batches if b.accepted_at is not None]
    errors = [b.error for b in batches if b.error]
    accepted = {eid: b.accepted_at for b in sent for eid in b.accepted_ids}
    missing = _wait_visible(pollers, list(accepted), drain_timeout)
    sinks: dict[str, Any] = {}
    for p in pollers:
        latencies = [p.first_seen[eid] - at for eid, at in accepted.items() if eid in p.first_seen]
        sinks[p.sink] = {
            "events": len(latencies), "missing": missing[p.sink],
            **{f"p{q}_s": percentile(latencies, q / 100) for q in (50, 95, 99)},
            "max_s": max(latencies) if latencies else None,
            "median_poll_s": statistics.median(p.poll_seconds[-50:]) if p.poll_seconds else None,
        }
    return {"offered_events_per_s": rate, "offered_for_s": offered_for, "requests": len(batches),
            "accepted_events": len(accepted), "request_errors": len(errors), "first_error": errors[0] if errors else None,
            "sinks": sinks}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark.

    :param argv: command-line arguments without the program name (``None``: ``sys.argv[1:]``)
    :returns: ``{"rate", "duration_s", "runs": [{"sinks": {sink: {"p50_s", "p95_s", "p99_s", …}}, …}],
        "median": {sink: {"p50_s", "p95_s", "p99_s"}}}`` (latencies in seconds, medians over the runs)
    """
    parser = argparse.ArgumentParser(prog="bench_e2e", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="offered events/s (default 1000)")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of load per run (default 15)")
    parser.add_argument("--runs", type=int, default=3, help="measured windows (default 3)")
    parser.add_argument("--epoch-seconds", type=float, default=1.0,
                        help="the flow's epoch (-s): sinks flush at its end (default 1)")
    parser.add_argument("--drain-timeout", type=float, default=60.0,
                        help="longest wait for the last events of a run to show up (default 60)")
    parser.add_argument("--sinks", default=",".join(SINKS),
                        help="the flow's outputs, comma-separated (default: all three); one alone shows what the "
                             "others cost it")
    parser.add_argument("--users", type=int, default=500, help="people sending (default 500)")
    parser.add_argument("--json", action="store_true", help="print only the result as JSON")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.runs < 1:
        parser.error("--rate, --duration and --runs must be positive")
    sinks = [s.strip() for s in args.sinks.split(",") if s.strip()]
    if not sinks or set(sinks) - set(SINKS):
        parser.error(f"--sinks takes some of {', '.join(SINKS)}")
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))

    from headwater import traffic
    from headwater.settings import load_settings

    suffix = uuid.uuid4().hex[:8]
    master_key = secrets.token_bytes(32)
    people = traffic.population(args.users, seed=11)
    base = devstack_env()
    table = f"bench_e2e_accounts_{suffix}"
    procs: list[subprocess.Popen] = []
    pollers: list[SinkPoller] = []
    sender: Sender | None = None
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        work = Path(tmp)
        env_vars = private_env(base, suffix, work, master_key, _geo_database(work), table)
        env_vars["HEADWATER_FLOW_OUTPUTS"] = ",".join(sinks)
        try:
            _accounts(env_vars["HEADWATER_POSTGRES_URL"], people, table)
            _create_topics(env_vars["HEADWATER_KAFKA_BROKERS"], [env_vars[k] for k in (
                "HEADWATER_KAFKA_TOPIC_RAW", "HEADWATER_KAFKA_TOPIC_REJECTED", "HEADWATER_KAFKA_TOPIC_INVALID")])
            env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
            env.update(env_vars)
            port = _free_port()
            gateway_log, flow_log = work / "gateway.log", work / "flow.log"
            procs.append(_spawn(["gateway", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], env,
                                gateway_log))
            procs.append(_spawn(["flow", "-s", f"{args.epoch_seconds:g}"], env, flow_log))
            wait_ready(port, procs[0], timeout=60, output=lambda: gateway_log.read_text()[-2000:])
            say(f"e2e: gateway on :{port} and flow started (topic {env_vars['HEADWATER_KAFKA_TOPIC_RAW']})")
            settings = load_settings(env_vars)
            sender = Sender(port, master_key)
            pollers = [SinkPoller(settings, sink, sender.oldest_unseen).start() for sink in sinks]
            warm = build_batches(people, 1, seed=0)
            sender.offer(warm, 1000.0)
            if warm[0].error:
                raise RuntimeError(f"the gateway refused the warm-up batch: {warm[0].error}")
            started = time.monotonic()
            missing = _wait_visible(pollers, warm[0].accepted_ids, 120)
            if any(missing.values()):
                state = "running" if procs[1].poll() is None else f"exited with {procs[1].returncode}"
                raise RuntimeError(
                    f"warm-up events missing after 120 s {missing}; poll errors: "
                    + "; ".join(f"{p.sink}: {p.last_error.splitlines()[0]}" for p in pollers if p.last_error)
                    + f"; flow {state}, its log ends: {flow_log.read_text()[-1500:]}")
            say(f"e2e: warm-up visible in every sink after {time.monotonic() - started:.1f} s")
            count = max(1, round(args.rate * args.duration / EVENTS_PER_BATCH))
            for run in range(1, args.runs + 1):
                batches = build_batches(people, count, seed=run)
                result = _measure(sender, pollers, batches, args.rate, args.drain_timeout)
                runs.append(result)
                for proc, name, log in ((procs[0], "gateway", gateway_log), (procs[1], "flow", flow_log)):
                    if proc.poll() is not None:
                        raise RuntimeError(f"{name} exited with {proc.returncode}: {log.read_text()[-2000:]}")
                say(f"e2e run {run}: {result['accepted_events']:,} events accepted at {args.rate:,.0f}/s; "
                    + "; ".join(f"{s} p50 {_fmt(r['p50_s'])} p95 {_fmt(r['p95_s'])} p99 {_fmt(r['p99_s'])}"
                                + (f" ({r['missing']} missing)" if r["missing"] else "")
                                for s, r in result["sinks"].items()))
        finally:
            if sender is not None:
                sender.close()
            for p in pollers:
                p.stop()
            for proc in procs:
                stop_process_group(proc)
            _cleanup(env_vars, table, say)
    median = {}
    for sink in sinks:
        median[sink] = {}
        for key in ("p50_s", "p95_s", "p99_s"):
            values = [r["sinks"][sink][key] for r in runs if r["sinks"][sink][key] is not None]
            median[sink][key] = statistics.median(values) if values else None
        median[sink]["missing"] = sum(r["sinks"][sink]["missing"] for r in runs)
    result = {"rate": args.rate, "duration_s": args.duration, "epoch_s": args.epoch_seconds, "sinks": sinks,
              "runs": runs, "median": median}
    if args.json:
        print(json.dumps(result))
    return result


def _fmt(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f}s"


if __name__ == "__main__":
    main(sys.argv[1:])
