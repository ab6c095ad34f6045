"""Throughput of the whole flow, Kafka to Kafka, against a bare Bytewax pass-through on the same broker.

Usage::

    python bench/bench_flow.py [--events N] [--runs R] [--json]

What it does:

1. writes N realistic raw records (:class:`schemas.wire.RawRecord`: a mix of event names, a few thousand users
   with one device context each, sent in gateway requests of 1 to 50 events that share their receive time, send
   time, address and user agent; IPs the test geo database knows and some it does not, PII in the marked fields,
   about 1 % invalid) to a fresh 4-partition topic;
2. creates a PostgreSQL accounts table for half of the users and builds the geo database from
   ``tests/data/geoip_test.csv``, so that plan tier and geo do real work;
3. alternately runs (a) a bare ``KafkaSource → map → KafkaSink`` pass-through and (b) the full flow
   (``flows.dataflow.build_flow`` with the Kafka row and dead-letter sinks), each as its own
   ``python -m bytewax.run`` process writing to fresh topics.

How a run ends and is timed: both flows read the topic through the same wrapper around Bytewax's ``KafkaSource``
that ends each partition once it has handed over as many records as the producer put there (the devstack broker's
end-of-partition answers cannot be trusted), so the process exits by itself after its sinks have flushed. The
child stamps the wall clock when the first batch arrives; the run's rate is N divided by the time from that stamp
to the process's exit, so interpreter start-up and schema loading are not counted, but draining the sinks is.

Each child also reports the CPU time it used (all threads, from its first batch to its exit) per event: on a
busy machine the rates say as much about the neighbours as about the flow, the CPU time much less.

The machine is shared: compare the ratio full/bare of runs taken side by side, and look at the median.
``main(argv)`` returns the figures as a dict, for ``headwater bench``.
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from schemas.wire import RawRecord  # noqa: E402

PARTITIONS = 4
USERS = 3000
KNOWN_IPS = ("81.2.69.142", "81.2.69.7", "89.160.20.115", "8.8.8.8", "8.8.4.4")
UAS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1",
    "AcmeCommunity/4.12.0 (iPhone; iOS 17.4.1; Scale/3.00)",
)


# --- records -------------------------------------------------------------------------------------------------
def _context(user: int) -> dict[str, Any]:
    """One device's context: the same for every event of that user, as real SDKs send it."""
    rng = random.Random(user)
    context: dict[str, Any] = {
        "app": {"name": "Acme Community", "version": f"4.{rng.randint(0, 12)}.0", "build": str(rng.randint(1000, 5000))},
        "locale": rng.choice(("en-US", "de-DE", "sv-SE", "fr-FR")),
        "timezone": rng.choice(("Europe/Berlin", "Europe/London", "America/Los_Angeles")),
        "user_agent": rng.choice(UAS),
        "library": {"name": "headwater-js", "version": "1.3.0"},
    }
    if rng.random() < 0.7:
        context["ip"] = rng.choice(KNOWN_IPS) if rng.random() < 0.8 else f"198.51.100.{rng.randint(1, 254)}"
    if rng.random() < 0.5:
        context["device"] = {"type": "phone", "model": "iPhone15,3", "manufacturer": "Apple", "os": "iOS",
                             "os_version": "17.4.1"}
    if rng.random() < 0.3:
        context["experiments"] = {"onboarding_v2": rng.choice(("control", "treatment"))}
    return context


def _properties(name: str, rng: random.Random, user: int) -> dict[str, Any]:
    if name == "page_viewed":
        path = rng.choice(("/pricing", "/", "/docs/start", "/blog/launch"))
        return {"url": f"https://acme.example{path}", "path": path}
    if name == "screen_viewed":
        return {"screen_name": rng.choice(("Home", "Inbox", "Settings")), "load_time_ms": rng.randint(20, 900),
                "is_first_view": rng.random() < 0.1, "orientation": "portrait"}
    if name == "message_sent":
        return {"message_id": f"msg_{rng.getrandbits(40):x}", "conversation_id": f"cv_{user}",
                "channel_type": "direct", "message_type": "text", "length_chars": rng.randint(1, 400),
                "contains_link": rng.random() < 0.2, "sent_via": "web"}
    if name == "identify":
        return {"email": f"Person.{user}@Example.org", "phone": f"+49151{user:07d}", "username": f"handle_{user}",
                "name": f"Person {user}", "country": "DE"}
    return {"subscription_id": f"sub_{user}", "plan_id": "team_monthly_v3", "plan_name": "Team",
            "billing_interval": "month", "amount_minor": 4900, "currency": "EUR", "seats": rng.randint(1, 50),
            "payment_provider": "stripe", "billing_email": f"billing{user}@acme.example"}


_MIX = (("page_viewed", 40), ("screen_viewed", 25), ("message_sent", 20), ("identify", 10),
        ("subscription_started", 5))


#: Most events per gateway request in the records: a device's SDK flushes whatever it has queued, 1 to 50 events.
MAX_REQUEST_EVENTS = 50


def make_records(count: int, seed: int = 7, invalid_share: float = 0.01,
                 max_request_events: int = MAX_REQUEST_EVENTS) -> list[tuple[bytes, bytes]]:
    """``count`` raw-topic records as ``(key, value)``, deterministic for a seed, shaped as the gateway writes them.

    The gateway writes one record per event, but the events come in requests: a device sends a batch of 1 to 50
    events at once, and every record of one request carries the same ``received_at``, ``sent_at``, client address
    and user agent, and (the same device) the same user and context. The records come in such runs here: a device
    picked at random sends a batch of a random size, its events a few seconds apart before ``sent_at``.

    :param count: how many
    :param seed: random seed
    :param invalid_share: share of events that fail validation (they become dead letters)
    :param max_request_events: most events per request (1: every event from a request of its own, nothing shared
        between neighbouring records, the worst case for the flow's memos)
    """
    rng = random.Random(seed)
    names = [n for n, weight in _MIX for _ in range(weight)]
    contexts = {u: _context(u) for u in range(USERS)}
    now = dt.datetime.now(dt.timezone.utc)
    out: list[tuple[bytes, bytes]] = []
    while len(out) < count:
        user = rng.randrange(USERS)
        sent = now - dt.timedelta(seconds=rng.uniform(1, 600))
        shared = {"received_at": _rfc3339(sent + dt.timedelta(seconds=rng.uniform(0.05, 2))),
                  "sent_at": _rfc3339(sent), "client_ip": rng.choice(KNOWN_IPS), "user_agent": UAS[user % len(UAS)]}
        for _ in range(min(rng.randint(1, max_request_events), count - len(out))):
            name = rng.choice(names)
            event: dict[str, Any] = {
                "event": name, "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "timestamp": _rfc3339(sent - dt.timedelta(seconds=rng.uniform(0, 30))),
                "properties": _properties(name, rng, user), "context": contexts[user],
            }
            if user % 4 == 3:
                event["anonymous_id"] = f"anon_{user}"
            else:
                event["user_id"] = f"user-{user}"
            if rng.random() < invalid_share:
                event["properties"].pop(next(iter(event["properties"])))  # a required property goes missing
                event["properties"]["unexpected"] = True
            record = RawRecord(event, gateway_id="gw-bench", **shared)
            out.append((record.key, record.encode()))
    return out


def _rfc3339(when: dt.datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


# --- the flows, built inside the bytewax.run child ----------------------------------------------------------------
def _counted(source: Any, counts: Sequence[int], start_file: str) -> Any:
    """``source`` (a ``KafkaSource``) ending each partition after ``counts[partition]`` records."""
    from bytewax.connectors.kafka import KafkaSourceMessage
    from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

    started = threading.Event()

    class Partition(StatefulSourcePartition):
        def __init__(self, inner: Any, expected: int):
            self._inner, self._left = inner, expected

        def next_batch(self) -> list:
            if self._left <= 0:
                raise StopIteration()
            batch = self._inner.next_batch()
            if batch and not started.is_set():
                started.set()
                # wall clock and the CPU time the process has used so far (start-up), for the CPU per event
                Path(start_file).write_text(f"{time.time()!r} {time.process_time()!r}")
            self._left -= sum(1 for m in batch if isinstance(m, KafkaSourceMessage))
            return batch

        def snapshot(self) -> Any:
            return self._inner.snapshot()

        def close(self) -> None:
            self._inner.close()

    class Counted(FixedPartitionedSource):
        def list_parts(self) -> list[str]:
            return source.list_parts()

        def build_part(self, step_id: str, for_part: str, resume_state: Any) -> Partition:
            index = int(for_part.split("-", 1)[0])
            return Partition(source.build_part(step_id, for_part, resume_state), counts[index])

    return Counted()


def bare_flow(raw_topic: str, out_topic: str, counts: list[int], start_file: str) -> Any:
    """A bare Bytewax pass-through: Kafka source → map to a sink message → Bytewax's ``KafkaSink``."""
    import bytewax.operators as op
    from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage
    from bytewax.dataflow import Dataflow

    from flows.dataflow import kafka_source
    from headwater.settings import load_settings

    settings = load_settings()
    flow = Dataflow("bench_bare")
    raw = op.input("raw", flow, _counted(kafka_source(settings, raw_topic), counts, start_file))
    messages = op.map("to_message", raw, lambda m: KafkaSinkMessage(m.key, m.value))
    op.output("out", messages, KafkaSink(settings.kafka_brokers.split(","), out_topic,
                                         add_config=settings.kafka_config(**{"linger.ms": 5, "acks": "all"})))
    return flow


def full_flow(raw_topic: str, out_topic: str, invalid_topic: str, counts: list[int], start_file: str,
              table: str) -> Any:
    """The production flow (decode → validate → PII → geo → plan tier → context → rows) to Kafka topics."""
    from flows.dataflow import build_flow, dead_letter_sink, kafka_source
    from flows.outputs import kafka_rows
    from flows.runtime import settle_heap
    from flows.stages import Stages
    from headwater.settings import load_settings
    from schemas.registry import SchemaRegistry

    settings = load_settings()
    registry = SchemaRegistry.load()
    flow = build_flow(
        settings, source=_counted(kafka_source(settings, raw_topic), counts, start_file),
        sinks={"kafka": kafka_rows(settings, out_topic)}, dead_letters=dead_letter_sink(settings, invalid_topic),
        stages=Stages.from_settings(settings, registry, table=table), batch_size=settings.flow_batch_size,
    )
    settle_heap()  # as flows.run.get_flow does for the production flow
    return flow


# --- the orchestrator ------------------------------------------------------------------------------------------------
def _create_topics(brokers: str, names: list[str]) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": brokers})
    for future in admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names]).values():
        future.result(15)


def _delete_topics(brokers: str, names: list[str]) -> None:
    from confluent_kafka.admin import AdminClient

    if names:
        admin = AdminClient({"bootstrap.servers": brokers})
        for future in admin.delete_topics(names).values():
            try:
                future.result(15)
            except Exception:  # best effort: a leftover topic costs memory, not correctness
                pass


def _produce(brokers: str, topic: str, records: list[tuple[bytes, bytes]]) -> list[int]:
    from confluent_kafka import Producer

    counts = [0] * PARTITIONS
    failed = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            failed.append(err)
        else:
            counts[msg.partition()] += 1

    producer = Producer({"bootstrap.servers": brokers, "acks": "all", "linger.ms": 20})
    for key, value in records:
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(60) or failed:
        raise RuntimeError(f"could not write the benchmark records: {failed[:1]}")
    return counts


def _count_topic(brokers: str, topic: str, idle_s: float = 3.0) -> int:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": brokers, "group.id": f"bench-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 10})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    seen, last = 0, time.monotonic()
    try:
        while time.monotonic() - last < idle_s:
            for msg in consumer.consume(1000, 0.2):
                if msg.error() is None:
                    seen += 1
                    last = time.monotonic()
    finally:
        consumer.close()
    return seen


def _accounts_table(postgres_url: str) -> str:
    import psycopg

    table = f"bench_accounts_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (user_id text primary key, plan_tier text, updated_at timestamptz)")
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {table} VALUES (%s, %s, now())",
                            [(f"user-{u}", ("free", "pro", "enterprise")[u % 3]) for u in range(0, USERS, 2)])
    return table


def _drop_table(postgres_url: str, table: str) -> None:
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")


def _wait(proc: subprocess.Popen, timeout_s: float) -> float | None:
    """Wait for ``proc``; its CPU time (user + system, all threads) in seconds, ``None`` when it timed out."""
    deadline = time.monotonic() + timeout_s
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)


def _run(call: str, env: dict[str, str], work: Path, events: int, timeout_s: float) -> tuple[float, float]:
    """One ``bytewax.run`` child: ``(events/s, CPU µs per event)``, both from its first batch to its exit."""
    start_file = work / f"start-{uuid.uuid4().hex[:8]}"
    call = call.replace("START_FILE", str(start_file))
    log = work / f"{start_file.name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bytewax.run", call], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
        cpu = _wait(proc, timeout_s)
        if cpu is None:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"run did not finish in {timeout_s:.0f} s: {log.read_text()[-2000:]}") from None
    ended = time.time()
    if proc.returncode != 0 or not start_file.exists():
        raise RuntimeError(f"run failed ({proc.returncode}): {log.read_text()[-2000:]}")
    started, cpu_at_start = (float(x) for x in start_file.read_text().split())
    return events / (ended - started), (cpu - cpu_at_start) / events * 1e6


def child_env(args: argparse.Namespace, work: Path, drop: tuple[str, ...] = ("HEADWATER_",)) -> dict[str, str]:
    """The environment of a benchmark's flow child: this one without the variables starting with ``drop``, plus the
    broker and PostgreSQL of ``args``, a PII salt for today's quarter and a geo database built in ``work``."""
    from geoip.build import build_city_database
    from headwater.settings import quarter_of

    geo_db = build_city_database(REPO / "tests" / "data" / "geoip_test.csv", work / "city.mmdb")
    salt = base64.b64encode(b"bench-salt-0123456789abcdef-0123").decode()
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update({"HEADWATER_KAFKA_BROKERS": args.brokers, "HEADWATER_POSTGRES_URL": args.postgres_url,
                "HEADWATER_PII_SALTS": f"{quarter_of(dt.datetime.now(dt.timezone.utc).date())}:{salt}",
                "HEADWATER_GEOIP_DB": str(geo_db), "HEADWATER_DATA_DIR": str(work / "data"),
                "HEADWATER_LOG_LEVEL": "WARNING", "PYTHONPATH": str(REPO)})
    return env


def parse_pair_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """The options of a paired full-vs-bare flow benchmark (this one and bench_quix), parsed and checked."""
    parser.add_argument("--events", type=int, default=100_000, help="records per run (default 100000)")
    parser.add_argument("--runs", type=int, default=3, help="pairs of runs (default 3)")
    parser.add_argument("--brokers", default=os.environ.get("HEADWATER_KAFKA_BROKERS", "127.0.0.1:29092"))
    parser.add_argument("--postgres-url", default=os.environ.get("HEADWATER_POSTGRES_URL",
                                                                 "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--request-events", type=int, default=MAX_REQUEST_EVENTS,
                        help="most events per gateway request in the records (default 50; 1: no two records share "
                             "a request)")
    parser.add_argument("--no-verify", action="store_true", help="skip counting the first full run's output")
    parser.add_argument("--json", action="store_true", help="print only the result as JSON")
    args = parser.parse_args(argv)
    if args.events < 1 or args.runs < 1 or args.request_events < 1:
        parser.error("--events, --runs and --request-events must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark.

    :param argv: command-line arguments without the program name (``None``: ``sys.argv[1:]``)
    :returns: ``{"events", "bare": [...], "full": [...], "ratios": [...], "median_*", "bare_cpu_us": [...],
        "full_cpu_us": [...]}`` (rates in events/s; CPU time per event in µs)
    """
    parser = argparse.ArgumentParser(prog="bench_flow", description=__doc__.split("\n\n")[0])
    args = parse_pair_args(parser, argv)
    say = (lambda *a: None) if args.json else print

    suffix = uuid.uuid4().hex[:8]
    raw_topic = f"bench.flow.raw.{suffix}"
    records = make_records(args.events, max_request_events=args.request_events)
    created = [raw_topic]
    _create_topics(args.brokers, [raw_topic])
    counts = _produce(args.brokers, raw_topic, records)
    say(f"wrote {args.events:,} records to {raw_topic} (per partition {counts})")
    bare, full, ratios, bare_cpu, full_cpu = [], [], [], [], []
    table = _accounts_table(args.postgres_url)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-flow-") as tmp:
            work = Path(tmp)
            env = child_env(args, work)
            timeout_s = max(120.0, args.events / 500)
            for run in range(1, args.runs + 1):
                topics = {k: f"bench.flow.{k}.{suffix}.{run}" for k in ("bare", "rows", "invalid")}
                created.extend(topics.values())
                _create_topics(args.brokers, list(topics.values()))
                bare_rate, bare_us = _run(f"bench.bench_flow:bare_flow({raw_topic!r}, {topics['bare']!r}, {counts!r}, "
                                 f"'START_FILE')", env, work, args.events, timeout_s)
                full_rate, full_us = _run(f"bench.bench_flow:full_flow({raw_topic!r}, {topics['rows']!r}, "
                                 f"{topics['invalid']!r}, {counts!r}, 'START_FILE', {table!r})",
                                 env, work, args.events, timeout_s)
                bare.append(bare_rate)
                full.append(full_rate)
                ratios.append(full_rate / bare_rate)
                bare_cpu.append(bare_us)
                full_cpu.append(full_us)
                say(f"run {run}: bare {bare_rate:10,.0f} events/s   full {full_rate:10,.0f} events/s   "
                    f"ratio {full_rate / bare_rate:.2f}   (CPU per event: bare {bare_us:.1f} µs, "
                    f"full {full_us:.1f} µs)")
                if run == 1 and not args.no_verify:
                    rows, letters = _count_topic(args.brokers, topics["rows"]), _count_topic(args.brokers, topics["invalid"])
                    copied = _count_topic(args.brokers, topics["bare"])
                    say(f"       check: {rows:,} rows + {letters:,} dead letters; bare copied {copied:,}")
                    if rows + letters < args.events or copied < args.events:
                        raise RuntimeError("a flow wrote fewer records than it read")
    finally:
        _drop_table(args.postgres_url, table)
        _delete_topics(args.brokers, created)  # the devstack broker keeps everything in memory
    result = {
        "events": args.events, "bare": [round(r) for r in bare], "full": [round(r) for r in full],
        "ratios": [round(r, 3) for r in ratios], "median_bare": round(statistics.median(bare)),
        "median_full": round(statistics.median(full)), "median_ratio": round(statistics.median(ratios), 3),
        # CPU time of each child from its first batch to its exit, all threads (librdkafka's included), per event:
        # less at the mercy of other load on the machine than the rates
        "bare_cpu_us": [round(c, 1) for c in bare_cpu], "full_cpu_us": [round(c, 1) for c in full_cpu],
    }
    say(f"median: bare {result['median_bare']:,} events/s, full {result['median_full']:,} events/s, "
        f"ratio full/bare {result['median_ratio']:.2f}")
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
